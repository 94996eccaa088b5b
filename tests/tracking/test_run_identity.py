"""Which MLflow run a run folder writes to, on a real ``mlflow server``: a folder retrained
under another configuration gets a new run (the old one marked superseded); a worker killed
mid-run and resumed leaves every epoch's metrics in the run exactly once per step; an
evaluation neither rewrites the training's provenance nor evaluates weights of another run
key; ``glsim tracking sync`` replays calls only into a run of their key; a logged model
names its classes wherever it is loaded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from PIL import Image  # noqa: E402
from tiny import imagefolder_params, tiny_params  # noqa: E402

from glsim.cli import main  # noqa: E402
from glsim.config import write_resolved  # noqa: E402
from glsim.errors import RunError  # noqa: E402
from glsim.protocol.data import prepare, shard  # noqa: E402
from glsim.protocol.evaluate import evaluate_run  # noqa: E402
from glsim.protocol.specs import final_spec  # noqa: E402
from glsim.runs import run_key  # noqa: E402
from glsim.tracking.mlflow import (  # noqa: E402
    PENDING_FILE,
    RUN_ID_FILE,
    SUPERSEDED_BY,
    SUPERSEDES,
    Tracker,
    is_provenance,
    logged_class_names,
    param_values,
)
from glsim.tracking.sync import sync_run  # noqa: E402
from glsim.train.run import train_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EPOCH_METRICS = ("train_loss", "train_acc", "train_epoch_seconds")
STEPS = 3  # 18 train images, batch 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny synthetic dataset, prepared and sharded once for the module."""
    root = tmp_path_factory.mktemp("identity-data")
    params = tiny_params(root, protocol={"lr_grid": [], "seeds": [1]})
    prepare(params)
    shard(params)
    return params


@pytest.fixture
def at(data, shared_server, tmp_path, monkeypatch):
    """``at(experiment, **overrides)``: the module's params with runs, reports and MLflow
    experiment of this test, tracked by the shared server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_server.uri)
    monkeypatch.chdir(tmp_path)

    def params(experiment: str, **overrides):
        return data.with_overrides({
            "base.runs_dir": str(tmp_path / "runs"), "base.reports_dir": str(tmp_path / "reports"),
            "base.experiment": experiment, **overrides,
        })  # fmt: skip

    return params


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def logged_models(run) -> list:
    return mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )


def test_a_folder_retrained_under_other_params_gets_a_new_run(at, shared_server):
    client = MlflowClient(shared_server.uri)
    first = at("identity-retrain", **{"train.epochs": 1})
    spec = final_spec(first, "vit", 1)
    run_dir = train_run(first, spec)
    old_id = (run_dir / RUN_ID_FILE).read_text()
    second = first.with_overrides({"train.epochs": 2})
    assert run_key(second, spec) != run_key(first, spec)
    assert train_run(second, spec) == run_dir
    new_id = (run_dir / RUN_ID_FILE).read_text()

    assert new_id != old_id
    old, new = client.get_run(old_id), client.get_run(new_id)
    assert old.data.tags[SUPERSEDED_BY] == new_id and new.data.tags[SUPERSEDES] == old_id
    assert old.data.tags["run_key"] == run_key(first, spec)
    assert new.data.tags["run_key"] == run_key(second, spec)
    resolved = yaml.safe_load((run_dir / "params.resolved.yaml").read_text())
    assert new.data.params == param_values(resolved)  # every param of the new configuration
    assert old.data.params == param_values(first.model_dump(mode="json"))  # the old, untouched
    assert (old.data.params["train.epochs"], new.data.params["train.epochs"]) == ("1", "2")
    for key in EPOCH_METRICS:  # each configuration's epochs in its own run
        assert [s for s, _ in history(client, old_id, key)] == [STEPS]
        assert [s for s, _ in history(client, new_id, key)] == [STEPS, 2 * STEPS]
    assert len(logged_models(old)) == len(logged_models(new)) == 1
    assert new.data.tags["git_commit"] and new.data.tags["runtime.torch"]

    # the same configuration again: finished, not repeated, and no new run
    train_run(second, spec)
    assert (run_dir / RUN_ID_FILE).read_text() == new_id
    assert len(client.search_runs([new.info.experiment_id])) == 2


def test_epochs_whose_metrics_were_lost_are_sent_on_resume(at, shared_server):
    """Epoch 2 trained by a worker whose metrics never reached MLflow (here: untracked):
    the resumed run sends it from the checkpoint's history; epoch 1 is not sent twice."""
    client = MlflowClient(shared_server.uri)
    params = at("identity-lost", **{"train.epochs": 3})
    spec = final_spec(params, "vit", 1)
    run_dir = train_run(params, spec, stop_after_epochs=1)
    run_id = (run_dir / RUN_ID_FILE).read_text()
    train_run(params, spec, track=False, stop_after_epochs=1)
    assert [s for s, _ in history(client, run_id, "train_loss")] == [STEPS]
    train_run(params, spec)
    assert (run_dir / RUN_ID_FILE).read_text() == run_id
    done = json.loads((run_dir / "train.json").read_text())["history"]
    for key, name in zip(
        EPOCH_METRICS, ("train/loss", "train/acc", "train/epoch_seconds"), strict=True
    ):
        assert history(client, run_id, key) == [
            (STEPS * (e + 1), h[name]) for e, h in enumerate(done)
        ]


@pytest.mark.integration  # a subprocess stage
def test_a_worker_killed_mid_run_and_resumed_logs_each_epoch_once(at, shared_server, tmp_path):
    epochs = 30
    params = at("identity-kill", **{"train.epochs": epochs})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    spec = final_spec(params, "vit", 1)
    run_dir = spec.run_dir(params)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": shared_server.uri}
    cmd = [sys.executable, str(ROOT / "pipelines/train.py"), "--params", str(params_file),
           "--model", "vit", "--seed", "1"]  # fmt: skip
    worker = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while not (run_dir / "last.pt").exists():  # killed as soon as an epoch is checkpointed
            assert worker.poll() is None, f"the worker exited {worker.returncode} before epoch 1"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.01)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert worker.returncode == -signal.SIGKILL, "the worker finished before the kill"
    run_id = (run_dir / RUN_ID_FILE).read_text()

    train_run(params, spec)  # resumed elsewhere (here: in this process)

    client = MlflowClient(shared_server.uri)
    assert (run_dir / RUN_ID_FILE).read_text() == run_id
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    losses = [h["train/loss"] for h in json.loads((run_dir / "train.json").read_text())["history"]]
    assert history(client, run_id, "train_loss") == [
        (STEPS * (e + 1), v) for e, v in enumerate(losses)
    ]
    for key in (*EPOCH_METRICS, "train_loss_step", "train_lr"):
        steps = [s for s, _ in history(client, run_id, key)]
        assert steps == sorted(set(steps)), f"{key}: a step logged twice"
    assert [s for s, _ in history(client, run_id, "train_acc")] == [
        STEPS * e for e in range(1, epochs + 1)
    ]


@pytest.mark.integration  # a subprocess stage
def test_evaluation_keeps_the_training_provenance_and_refuses_another_run_key(
    at, shared_server, tmp_path
):
    client = MlflowClient(shared_server.uri)
    params = at("identity-eval", **{"train.epochs": 1})
    spec = final_spec(params, "glsim", 1)
    run_dir = train_run(params, spec)
    run_id = (run_dir / RUN_ID_FILE).read_text()
    trained_on = {"git_commit": "0" * 40, "runtime.cpu_model": "the training machine"}
    client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in trained_on.items()])
    tags = client.get_run(run_id).data.tags
    provenance = {k: v for k, v in tags.items() if is_provenance(k)}
    assert {"params_hash", "data_dvc_md5", "run_key", "runtime.torch"} <= provenance.keys()

    report = evaluate_run(params, spec)
    assert report["run_key"] == run_key(params, spec)
    after = client.get_run(run_id)
    assert {k: after.data.tags[k] for k in provenance} == provenance
    assert after.data.tags["eval.git_commit"] and after.data.tags["eval.runtime.torch"]
    assert "test_top1" in after.data.metrics and (run_dir / RUN_ID_FILE).read_text() == run_id

    # evaluated under another top_k: weights of a run never trained with it, refused
    report_path = spec.report_path(params)
    report_path.unlink()
    with pytest.raises(RunError, match="trained under run key"):
        evaluate_run(params.with_overrides({"model.glsim.top_k": 16}), spec)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    stage = subprocess.run(
        [sys.executable, str(ROOT / "pipelines/evaluate.py"), "--params", str(params_file),
         "--model", "glsim", "--seed", "1", "--set", "model.glsim.top_k=16"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert stage.returncode == 2, stage.stderr[-2000:]
    err = stage.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "trained under run key" in err[0]
    assert not report_path.exists()


def test_sync_replays_calls_only_into_a_run_of_their_key(at, shared_server):
    params = at("identity-sync")
    spec = final_spec(params, "vit", 1)
    run_dir = spec.run_dir(params)
    write_resolved(params, run_dir)
    key = run_key(params, spec)
    with Tracker(experiment="identity-sync", run_name=spec.label(params), run_dir=run_dir,
                 run_key=key) as t:  # fmt: skip
        current = t.run_id
    earlier, lost = "a" * 32, "c" * 32  # run ids this store never had

    def call(run_id, run_key, value):
        return {"call": "log_metrics", "args": {"train_loss": value}, "step": 1, "time": 1000.0,
                "run_id": run_id, "run_key": run_key}  # fmt: skip

    lines = [call(earlier, "an-earlier-key", 9.0), call(lost, key, 1.0)]
    (run_dir / PENDING_FILE).write_text("".join(json.dumps(c) + "\n" for c in lines))
    result = sync_run(run_dir)

    client = MlflowClient(shared_server.uri)
    assert history(client, current, "train_loss") == [(1, 1.0)]  # its own key's call only
    assert result.created
    (other,) = [
        r
        for r in client.search_runs([client.get_run(current).info.experiment_id])
        if r.info.run_id != current
    ]
    assert history(client, other.info.run_id, "train_loss") == [(1, 9.0)]
    assert other.data.tags[SUPERSEDED_BY] == current
    assert (run_dir / RUN_ID_FILE).read_text() == current  # the folder's run stays its own


def test_predict_names_classes_from_the_logged_model(shared_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_server.uri)
    monkeypatch.chdir(tmp_path)
    params = imagefolder_params(tmp_path, **{"base": {"experiment": "identity-predict"}})
    run_dir = train_run(params, final_spec(params, "glsim", 1))
    run_id = (run_dir / RUN_ID_FILE).read_text()
    trained_names = [f"species_{c:03d}" for c in range(3)]
    assert logged_class_names(f"runs:/{run_id}/model") == trained_names
    client = MlflowClient(shared_server.uri)
    name = f"identity-predict-{tmp_path.name}"
    version = mlflow.register_model(f"runs:/{run_id}/model", name)
    client.set_registered_model_alias(name, "champion", version.version)

    # today's local shards name the classes otherwise: the model's own names win
    classes = params.data.shards_dir / "mine" / "classes.json"
    classes.write_text(json.dumps(["renamed 0", "renamed 1", "renamed 2"]))
    image = tmp_path / "a.png"
    Image.new("RGB", (30, 20), (200, 10, 10)).save(image)
    for uri in (f"runs:/{run_id}/model", f"models:/{name}@champion"):
        capsys.readouterr()
        assert main(["predict", str(image), "--model", uri, "--top-k", "3", "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)
        assert {p["label"] for p in row["predictions"]} == set(trained_names), uri
