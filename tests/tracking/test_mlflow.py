"""glsim/tracking/mlflow.py: a resumable Tracker run on an embedded sqlite store, plus the
pure helpers (flatten, tracking_uri, dvc_hash). MLflow's sqlite init takes seconds, so the
store is made once per module and the run tests share it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from glsim.tracking.mlflow import (  # noqa: E402
    PARAMS_CHANGED,
    RUN_ID_FILE,
    Tracker,
    _build_versions,
    dvc_hash,
    flatten,
    runtime_tags,
    tracking_uri,
)

EXPERIMENT = "glsim-test"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tmp root whose default store (``root/mlflow.db``, artifacts in ``root/mlartifacts``) is used."""
    root = tmp_path_factory.mktemp("mlflow_root")
    with pytest.MonkeyPatch.context() as mp:
        # setenv first so the context restores the variable's absence even after
        # mlflow.set_tracking_uri (called by Tracker) has written it into os.environ
        mp.setenv("MLFLOW_TRACKING_URI", "")
        mp.delenv("MLFLOW_TRACKING_URI")
        mp.chdir(root)  # anything MLflow writes relative to the cwd stays in tmp
        tracker = Tracker(experiment=EXPERIMENT, run_name="init", root=root)  # creates the store
        yield root, MlflowClient(tracking_uri(root)), tracker.experiment_id
        if mlflow.active_run():
            mlflow.end_run()


def test_tracking_uri_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert tracking_uri(tmp_path) == "sqlite:///elsewhere.db"


def test_flatten():
    tree = {
        "train": {"lr": 0.1, "seeds": [1, 10]},
        "model": {"glsim": {"top_k": 8}, "x": {}},
        "seed": 0,
    }
    assert flatten(tree) == {
        "train.lr": 0.1,
        "train.seeds": [1, 10],
        "model.glsim.top_k": 8,
        "model.x": {},
        "seed": 0,
    }


def test_run_logs_params_metrics_artifact_and_resumes(store, tmp_path):
    root, client, _ = store
    run_dir = tmp_path / "run"
    artifact = tmp_path / "report.json"
    artifact.write_text('{"top1": 90.0}')

    with Tracker(
        experiment=EXPERIMENT, run_name="vit-s1", run_dir=run_dir, root=root, tags={"model": "vit"}
    ) as t:
        t.log_params({"train": {"lr": 0.01, "seeds": [1]}, "model": {"glsim": {"top_k": 8}}})
        t.log_metrics({"train/loss": 1.5}, step=1)
        t.log_metrics({"train/loss": 1.25, "train/acc": 40}, step=2)
        t.log_artifact(artifact, artifact_path="eval")
        run_id = t.run_id
    assert (run_dir / RUN_ID_FILE).read_text() == run_id

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "vit-s1"
    assert run.data.params == {"train.lr": "0.01", "train.seeds": "[1]", "model.glsim.top_k": "8"}
    assert run.data.tags["model"] == "vit" and run.data.tags["git_commit"]
    assert run.data.tags["runtime.torch_threads"] == str(torch.get_num_threads())
    assert run.data.tags["runtime.cpu_capability"] and run.data.tags["runtime.torch"]
    history = client.get_metric_history(run_id, "train_loss")  # "/" becomes "_"
    assert sorted((m.step, m.value) for m in history) == [(1, 1.5), (2, 1.25)]
    assert run.data.metrics["train_acc"] == 40.0
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/report.json"]
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert (root / "mlflow.db").is_file()

    # a killed run re-enters with the same run_dir: the same MLflow run continues
    with Tracker(experiment=EXPERIMENT, run_name="vit-s1", run_dir=run_dir, root=root) as t:
        assert t.run_id == run_id
        t.log_params(
            {"train": {"lr": 0.01, "seeds": [1]}, "eval": {"batch_size": 64}}
        )  # same values: no error
        t.log_metrics({"train/loss": 1.0}, step=3)
    run = client.get_run(run_id)
    assert run.data.params["eval.batch_size"] == "64"
    assert PARAMS_CHANGED not in run.data.tags  # the same values: nothing changed
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3]
    assert len(client.search_runs([run.info.experiment_id])) == 1

    # resumed under another value of a param: the logged one stays, the key is named
    with Tracker(experiment=EXPERIMENT, run_name="vit-s1", run_dir=run_dir, root=root) as t:
        t.log_params({"train": {"lr": 0.01}, "eval": {"batch_size": 32}})
        t.log_metrics({"train/loss": 9.0}, step=3)  # step 3 holds its value already
    run = client.get_run(run_id)
    assert run.data.params["eval.batch_size"] == "64"
    assert run.data.tags[PARAMS_CHANGED] == "eval.batch_size"
    history = client.get_metric_history(run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.5), (2, 1.25), (3, 1.0)]


def test_failed_block_marks_run_failed_and_stale_id_starts_afresh(store, tmp_path):
    root, client, _ = store
    run_dir = tmp_path / "run"
    with (
        pytest.raises(KeyError),
        Tracker(experiment=EXPERIMENT, run_name="boom", run_dir=run_dir, root=root) as t,
    ):
        failed_id = t.run_id
        raise KeyError("stage failed")
    assert client.get_run(failed_id).info.status == "FAILED"

    (run_dir / RUN_ID_FILE).write_text("0" * 32)  # the store was wiped: unknown id
    with Tracker(experiment=EXPERIMENT, run_name="again", run_dir=run_dir, root=root) as t:
        new_id = t.run_id
    assert new_id not in (failed_id, "0" * 32)
    assert (run_dir / RUN_ID_FILE).read_text() == new_id
    assert client.get_run(new_id).info.status == "FINISHED"


def test_default_store_keeps_artifacts_under_root(store):
    root, client, experiment_id = store
    assert (
        client.get_experiment(experiment_id).artifact_location
        == (root.resolve() / "mlartifacts").as_uri()
    )


def test_tracker_does_not_pin_the_store_for_other_roots(store, tmp_path):
    root, _, _ = store
    assert tracking_uri(root).endswith(f"{root.resolve()}/mlflow.db")
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


# ---------------------------------------------------------------------------------------
# dvc_hash

DVC_LOCK = """\
schema: '2.0'
stages:
  prepare:
    cmd: python pipelines/prepare.py
    deps:
    - path: pipelines/prepare.py
      hash: md5
      md5: 11111111111111111111111111111111
    outs:
    - path: data/shards
      hash: md5
      md5: 22222222222222222222222222222222.dir
      size: 1024
      nfiles: 4
  train@vit:
    cmd: python pipelines/train.py vit
    outs:
    - path: runs/vit
      hash: md5
      md5: 33333333333333333333333333333333.dir
    - path: reports/vit.json
      hash: md5
      md5: 44444444444444444444444444444444
"""


def test_dvc_hash_reads_dvc_lock(tmp_path):
    (tmp_path / "dvc.lock").write_text(DVC_LOCK)
    assert dvc_hash("data/shards", root=tmp_path) == "22222222222222222222222222222222.dir"
    assert (
        dvc_hash(Path("reports") / "vit.json", root=tmp_path) == "44444444444444444444444444444444"
    )
    assert (
        dvc_hash("data/shards/", root=tmp_path) == "22222222222222222222222222222222.dir"
    )  # normalised
    assert dvc_hash("pipelines/prepare.py", root=tmp_path) == ""  # a dep, not an out
    assert dvc_hash("models/none", root=tmp_path) == ""


def test_dvc_hash_without_lock_or_empty_lock(tmp_path):
    assert dvc_hash("data/shards", root=tmp_path) == ""
    (tmp_path / "dvc.lock").write_text("")
    assert dvc_hash("data/shards", root=tmp_path) == ""


def test_param_keys_with_characters_mlflow_refuses_are_sanitised(store):
    root, client, _ = store
    with Tracker(experiment=EXPERIMENT, run_name="keys", root=root) as tracker:
        tracker.log_params({"ablations": {"tables": {"t5": {"rows": {"ViT + extra block (CLS)": ["vit"]}}}}})
        run_id = tracker.run_id
    params = client.get_run(run_id).data.params
    assert params["ablations.tables.t5.rows.ViT _ extra block _CLS_"] == "['vit']"


def test_runtime_tags_name_the_cpu_isa_libraries_and_threads(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\n"
        "flags\t\t: fpu sse avx2 fma avx512f avx512_bf16 amx_tile amx_bf16\n\n"
        "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n"
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    tags = runtime_tags(cpuinfo)
    assert tags["runtime.cpu_model"] == "Test CPU 9000"
    assert tags["runtime.cpu_isa_flags"] == "avx2 fma avx512f avx512_bf16 amx_tile amx_bf16"
    assert tags["runtime.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert tags["runtime.torch_threads"] == str(torch.get_num_threads())
    assert tags["runtime.torch"] == torch.__version__
    assert tags["runtime.env.OMP_NUM_THREADS"] == "3"
    assert tags["runtime.env.ONEDNN_MAX_CPU_ISA"] == "unset"
    assert {"runtime.timm", "runtime.numpy", "runtime.python"} <= set(tags)
    assert all(isinstance(v, str) and v for v in tags.values())  # MLflow takes strings
    missing = runtime_tags(tmp_path / "absent")  # no /proc (macOS): still tags, no error
    assert missing["runtime.cpu_model"] == "unknown" and missing["runtime.cpu_isa_flags"] == "none"


def test_build_versions_reads_mkl_and_onednn_from_torch_config():
    config = (
        "  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for ...\n"
        "  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71)\n"
    )
    assert _build_versions(config) == {"mkl": "2024.2-Product", "onednn": "v3.12.0"}
    assert _build_versions("no BLAS here") == {}
