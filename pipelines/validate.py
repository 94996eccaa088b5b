"""Stage `validate`: the great-expectations suite over the manifest and shard index.

A failing expectation exits non-zero with the expectation and offending rows, so nothing
downstream runs; the report lands in reports/validation/ either way.
"""

from _common import params_from, parser, run

from glsim.data.registry import manifest_path
from glsim.validation import validate_dataset
from glsim.validation.expected import expected_counts


def main() -> None:
    params = params_from(parser(__doc__).parse_args())
    d = params.data
    out = params.dataset_reports / "validation.json"
    report = validate_dataset(
        manifest_path(d.dataset, d.raw_dir),
        d.shards_dir / d.dataset,
        expected_counts(params),
        min_side=d.min_image_side,
        report_path=out,
    )
    print(f"validation passed: {report.summary()}")


if __name__ == "__main__":
    run(main)
