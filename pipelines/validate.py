"""Stage `validate`: the great-expectations suite over the manifest and shard index.

A failing expectation exits non-zero with the expectation and offending rows, so nothing
downstream runs; the report lands in reports/datasets/<dataset>/validation.json and in
MLflow (run `<dataset>/validate`) either way.
"""

from _common import params_from, parser, run

from glsim.validation.stage import validate_and_track


def main() -> None:
    report = validate_and_track(params_from(parser(__doc__).parse_args()))
    print(f"validation passed: {report.summary()}")


if __name__ == "__main__":
    run(main)
