"""Stage `validate`: the great-expectations suite over the manifest and shard index.

A failing expectation exits non-zero with the expectation and offending rows, so nothing
downstream runs; the report lands in reports/datasets/<dataset>/validation.json and in
MLflow (run `<dataset>/validate`) either way.
"""

from _common import run

from glsim.protocol.entry import stage_params, stage_parser
from glsim.protocol.validate import validate


def main() -> None:
    report = validate(stage_params(stage_parser(__doc__).parse_args()))
    print(f"validation passed: {report.summary()}")


if __name__ == "__main__":
    run(main)
