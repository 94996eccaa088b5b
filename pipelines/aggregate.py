"""Stage `aggregate`: per-seed eval reports -> reports/results.json and Table-4 tables."""

from _common import params_from, parser, run

from glsim.protocol import aggregate_reports


def main() -> None:
    params = params_from(parser(__doc__).parse_args())
    paths = aggregate_reports(params)
    print("\n".join(str(p) for p in paths))


if __name__ == "__main__":
    run(main)
