"""glsim/validation/stage.py: the `validate` stage writes its report to reports/ and logs it
to MLflow, whether the suite passes or fails. MLflow's sqlite init takes seconds, so the
store and the built-in dataset are made once per module and shared by the tests."""

from __future__ import annotations

import json

import pytest
from tiny import tiny_params

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from glsim.data.registry import manifest_path, prepare_dataset  # noqa: E402
from glsim.data.shards import write_shards  # noqa: E402
from glsim.runs import validation_report  # noqa: E402
from glsim.validation import ValidationFailed  # noqa: E402
from glsim.validation.stage import validate_and_track  # noqa: E402

EXPERIMENT = "glsim-validate-test"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(tmp root, MLflow client): the built-in dataset prepared and sharded, a sqlite store."""
    root = tmp_path_factory.mktemp("validate_stage")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)  # MLflow puts a non-embedded store's artifacts in ./mlruns
        params = tiny_params(root)
        d = params.data
        prepare_dataset(d.dataset, d.raw_dir, params=params, force=True)
        write_shards(
            manifest_path(d.dataset, d.raw_dir),
            d.shards_dir / d.dataset,
            max_count=8,
            max_bytes=1 << 20,
        )
        yield root, MlflowClient(uri)
        if mlflow.active_run():
            mlflow.end_run()


def _params(root, **expected):
    return tiny_params(root, base={"experiment": EXPERIMENT}, data={"expected": expected})


def _only_run(client: MlflowClient, dataset: str, status: str):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.status = '{status}'"
    )
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.run_name == f"{dataset}/validate"
    assert run.data.tags["stage"] == "validate" and run.data.tags["dataset"] == dataset
    return run


def _logged_report(client: MlflowClient, run_id: str, tmp_path) -> dict:
    artifacts = [a.path for a in client.list_artifacts(run_id, "validation")]
    assert artifacts == ["validation/validation.json"]
    local = client.download_artifacts(run_id, "validation/validation.json", str(tmp_path))
    with open(local) as f:
        return json.load(f)


def test_passing_dataset_is_reported_to_reports_and_mlflow(built, tmp_path):
    root, client = built
    params = _params(root)

    report = validate_and_track(params)

    assert report.success
    path = validation_report(params)
    assert path == root / "reports/datasets/synthetic_fg/validation.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["success"] is True
    run = _only_run(client, "synthetic_fg", "FINISHED")
    assert run.data.tags["validation"] == "passed"
    assert run.data.metrics == {
        "passed": 1.0,
        "expectations": len(report.results),
        "failed_expectations": 0.0,
        "offending_rows": 0.0,
    }
    assert run.data.params["expected.num_classes"] == "3"  # from the generated set's params
    assert run.data.params["min_image_side"] == str(params.data.min_image_side)
    assert _logged_report(client, run.info.run_id, tmp_path) == on_disk


def test_failing_dataset_is_logged_then_the_stage_fails(built, tmp_path):
    root, client = built
    params = _params(root, num_classes=4)  # the built-in set has 3

    with pytest.raises(ValidationFailed, match="4 classes") as info:
        validate_and_track(params)

    report = info.value.report
    failed = {r.description for r in report.failed}
    assert failed == {"4 classes", "every class present in train"}
    on_disk = json.loads((validation_report(params)).read_text())
    assert on_disk["success"] is False
    run = _only_run(client, "synthetic_fg", "FAILED")
    assert run.data.tags["validation"] == "failed"
    assert run.data.metrics["passed"] == 0.0
    assert run.data.metrics["failed_expectations"] == 2.0
    assert run.data.metrics["offending_rows"] == 1.0  # class 3 has no train image
    assert run.data.params["expected.num_classes"] == "4"
    assert _logged_report(client, run.info.run_id, tmp_path) == on_disk
