"""Stage `aggregate`: per-seed eval reports -> reports/results.json and Table-4 tables."""

from _common import run

from glsim.protocol.entry import parse_sets, root_params, stage_parser
from glsim.protocol.report import aggregate_reports


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    # the root tree, not one dataset's: each dataset is resolved from it
    params = root_params(args.params, parse_sets(args.set))
    paths = aggregate_reports(params)
    print("\n".join(str(p) for p in paths))


if __name__ == "__main__":
    run(main)
