"""The `validate` stage as one library call: run the suite on the current dataset, write the
report to ``reports/datasets/<dataset>/validation.json`` and log it to MLflow, pass or fail.

A failing suite is still logged (report, metrics, ``validation=failed`` tag; the MLflow run
ends FAILED) before :class:`~glsim.validation.suite.ValidationFailed` is re-raised, so the
stage fails and nothing downstream runs, while the report is there to read in both places.
"""

from __future__ import annotations

from glsim.config import Params
from glsim.runs import manifest_path, shards_dir, validation_report
from glsim.validation.expected import expected_counts
from glsim.validation.suite import ValidationFailed, ValidationReport, validate_dataset

REPORT_NAME = "validation.json"


def report_metrics(report: ValidationReport) -> dict[str, float]:
    """What MLflow gets as metrics: expectation counts and the offending rows."""
    return {
        "passed": float(report.success),
        "expectations": len(report.results),
        "failed_expectations": len(report.failed),
        "offending_rows": len(report.offending_rows),
    }


def validate_and_track(params: Params, *, workers: int = 1) -> ValidationReport:
    """Validate ``params.data.dataset``'s manifest and shards; log the report to MLflow.

    Args:
        params: The resolved params (``data.dataset`` is the dataset validated).
        workers: Processes decoding shards (1: in this process).

    Returns:
        The report (every expectation held).

    Raises:
        ValidationFailed: some expectation failed; the report is written and logged first.
    """
    from glsim.tracking.mlflow import CONTENT_TAG, Tracker, content_digest, logged_before

    d = params.data
    expected = expected_counts(params)
    report_path = validation_report(params)
    report = validate_dataset(
        manifest_path(params),
        shards_dir(params),
        expected,
        min_side=d.min_image_side,
        workers=workers,
        report_path=report_path,
        raise_on_failure=False,
    )
    logged = {"expected": expected.model_dump(), "min_image_side": d.min_image_side}
    tags = {"stage": "validate", "dataset": d.dataset,
            CONTENT_TAG: content_digest(report_path, extra=logged)}  # fmt: skip
    if logged_before(params.base.experiment, tags):  # the same report logged already
        if not report.success:
            raise ValidationFailed(report)
        return report
    with Tracker(
        experiment=params.base.experiment, run_name=f"{d.dataset}/validate", tags=tags
    ) as tracker:
        tracker.log_params(logged)
        tracker.log_metrics(report_metrics(report))
        tracker.log_artifact(report_path, artifact_path="validation")
        tracker.set_tags({"validation": "passed" if report.success else "failed"})
        if not report.success:
            raise ValidationFailed(report)  # inside the run: MLflow marks it FAILED
    return report
