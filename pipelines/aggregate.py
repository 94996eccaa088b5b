"""Stage `aggregate`: per-seed eval reports -> reports/results.json and Table-4 tables."""

from _common import parser, run

from glsim.config import params_of_args
from glsim.protocol import aggregate_reports, check_params


def main() -> None:
    args = parser(__doc__).parse_args()
    # the root tree, not one dataset's: each dataset is resolved from it with its own
    # overrides (protocol.seeds among them)
    params = check_params(params_of_args(args))
    paths = aggregate_reports(params)
    print("\n".join(str(p) for p in paths))


if __name__ == "__main__":
    run(main)
