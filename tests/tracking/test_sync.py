"""``glsim tracking sync`` on real ``mlflow server`` processes: a run whose server is killed
mid-run leaves ``tracking-pending.jsonl``; replayed to a server back on the same store it
completes the same run (metrics with their steps, artifact, tags, model, end status); replayed
to a fresh store it becomes a new run whose id the run folder then records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from tiny import tiny_params  # noqa: E402
from tracking_servers import free_port, mlflow_server  # noqa: E402

from glsim.cli import main  # noqa: E402
from glsim.config import for_dataset, write_resolved  # noqa: E402
from glsim.runs import RunSpec  # noqa: E402
from glsim.tracking.mlflow import PENDING_FILE, RUN_ID_FILE, Tracker, pending_calls  # noqa: E402
from glsim.tracking.sync import SYNCED_FILE, SYNCED_FROM_TAG, run_spec_for  # noqa: E402


def steps(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_run_spec_for_run_folders(tmp_path):
    p = for_dataset(tiny_params(tmp_path), "synthetic_fg")
    specs = [
        RunSpec(model="vit", seed=1),
        RunSpec(model="glsim", seed=10, lr=0.03, kind="lrsearch"),
        RunSpec(model="glsim", seed=1, kind="ablation", variant="glsim_no_aggregator"),
    ]
    for spec in specs:
        run_dir = spec.run_dir(p)
        write_resolved(p, run_dir)
        params, found = run_spec_for(run_dir)
        assert found.run_dir(params) == run_dir and found.label(params) == spec.label(p)
    assert run_spec_for(tmp_path) is None  # no params.resolved.yaml: not a run folder


def test_sync_errors_are_one_line(tmp_path, capsys):
    assert main(["tracking", "sync", str(tmp_path / "nope")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {tmp_path / 'nope'}: no such run folder or pending file"
    )
    (tmp_path / PENDING_FILE).write_text('{"call": "log_metrics"\n{"call": "end_run"}\n')
    assert main(["tracking", "sync", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"error: {tmp_path / PENDING_FILE}: line 1 is not JSON") and "\n" not in err
    )
    (tmp_path / PENDING_FILE).unlink()
    assert main(["tracking", "sync", str(tmp_path)]) == 0  # nothing pending: nothing to do
    assert "nothing to sync" in capsys.readouterr().out


def test_sync_replays_a_run_whose_server_died(shared_server, tmp_path, monkeypatch, capsys):
    p = for_dataset(tiny_params(tmp_path), "synthetic_fg")
    spec = RunSpec(model="vit", seed=1)
    run_dir = spec.run_dir(p)
    write_resolved(p, run_dir)
    report = tmp_path / "seed1.json"
    report.write_text('{"top1": 50.0}')
    monkeypatch.chdir(tmp_path)

    store = tmp_path / "store"
    with mlflow_server(store) as first:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", first.uri)
        with Tracker(
            experiment="glsim-sync", run_name=spec.label(p), run_dir=run_dir, root=tmp_path,
            tags={"model": "vit"},
        ) as t:  # fmt: skip
            t.log_params({"train": {"lr": 0.01}})
            t.log_metrics({"train/loss": 1.0}, step=1)
            first.kill()  # the server dies mid-run
            t.log_metrics({"train/loss": 0.5}, step=2)
            t.log_metrics({"train/loss": 0.25}, step=3)
            t.log_params({"late": {"param": 7}})
            t.set_tags({"validation": "passed"})
            t.log_artifact(report, artifact_path="eval")
            t.log_model(torch.nn.Linear(2, 2), name="model")
        run_id = t.run_id
    assert t.offline
    calls = pending_calls(run_dir / PENDING_FILE)
    assert [c["call"] for c in calls][-2:] == ["log_model", "end_run"]
    copy = tmp_path / "copy" / run_dir.relative_to(tmp_path)  # the same run, for a new store
    shutil.copytree(run_dir, copy)
    capsys.readouterr()

    # 1. the server is back (same store, another port): the same run is completed
    # images (B, 3, S, S) -> logits (B, 2), like a glsim model (the signature is made by running it)
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
    loaded_from = []

    def load_run(params, spec):  # the run's checkpoint, without training one here
        loaded_from.append(spec.run_dir(params))
        return net, {}

    monkeypatch.setattr("glsim.train.run.load_run", load_run)
    with mlflow_server(store, port=free_port()) as back:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", back.uri)
        assert main(["tracking", "sync", str(run_dir)]) == 0
        out = capsys.readouterr().out
        assert f"into run {run_id}" in out and "2 metrics" in out  # step 1 was sent
        client = MlflowClient(back.uri)
        run = client.get_run(run_id)
        assert steps(client, run_id, "train_loss") == [(1, 1.0), (2, 0.5), (3, 0.25)]
        assert run.data.params == {"train.lr": "0.01", "late.param": "7"}
        assert run.data.tags["validation"] == "passed" and run.info.status == "FINISHED"
        assert [f.path for f in client.list_artifacts(run_id, "eval")] == ["eval/seed1.json"]
        assert loaded_from == [run_dir]
        model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
        x = torch.randn(4, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(model(x), net(x))
        info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
        assert info.signature is not None and info.saved_input_example_info is not None
        assert not (run_dir / PENDING_FILE).exists()
        assert len(pending_calls(run_dir / SYNCED_FILE)) == len(calls)
        assert main(["tracking", "sync", str(run_dir)]) == 0  # again: nothing to do
        assert "nothing to sync" in capsys.readouterr().out

    # 2. a fresh store: a new run with the same name; the model cannot be loaded here (the
    # real load_run finds no checkpoint), so that one call is kept for a later sync
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_server.uri)
    assert main(["tracking", "sync", str(copy)]) == 1
    captured = capsys.readouterr()
    assert "into new run" in captured.out
    assert (
        "kept: log_model: model not logged: the checkpoint cannot be loaded here (no checkpoint at"
        in captured.err
    )
    new_id = (copy / RUN_ID_FILE).read_text()
    assert new_id != run_id
    client = MlflowClient(shared_server.uri)
    run = client.get_run(new_id)
    assert run.info.run_name == spec.label(p) == "synthetic_fg/vit/seed1"
    assert client.get_experiment(run.info.experiment_id).name == p.base.experiment
    assert run.data.tags[SYNCED_FROM_TAG] == run_id and run.info.status == "FINISHED"
    assert steps(client, new_id, "train_loss") == [(2, 0.5), (3, 0.25)]
    kept = pending_calls(copy / PENDING_FILE)
    assert [(c["call"], c["run_id"]) for c in kept] == [("log_model", new_id)]
    synced = pending_calls(copy / SYNCED_FILE)
    assert len(synced) == len(calls) - 1 and {c["run_id"] for c in synced} == {new_id}
    assert json.loads((copy / SYNCED_FILE).read_text().splitlines()[0])["run_id"] == new_id

    # a sync cut short is run again: what the store has is not sent twice
    again = copy.parent / "again"
    again.mkdir()
    shutil.copy(copy / SYNCED_FILE, again / PENDING_FILE)
    assert main(["tracking", "sync", str(again)]) == 0
    assert f"into run {new_id}" in capsys.readouterr().out
    assert steps(client, new_id, "train_loss") == [(2, 0.5), (3, 0.25)]


def test_sync_of_a_file_without_a_run_folder(shared_server, tmp_path, monkeypatch, capsys):
    """A Tracker without a run folder (the aggregate) keeps ``mlruns-pending/<name>.jsonl``;
    its ``start_run`` failed, so the run is created from what the file recorded."""
    pending = tmp_path / "mlruns-pending" / "aggregate.jsonl"
    pending.parent.mkdir()
    lines = [
        {"call": "start_run", "args": {"run_id": None, "experiment_id": "9", "run_name": "aggregate",
                                       "tags": {"stage": "aggregate", "git_commit": "abc"}},
         "step": None, "time": 1000.0, "run_id": None},
        {"call": "log_metrics", "args": {"synthetic_fg_vit_top1_mean": 71.5}, "step": None,
         "time": 1001.0, "run_id": None},
        {"call": "log_table", "args": {"data": {"seed": [1], "top1": [71.5]},
                                       "artifact_file": "tables/ledger_table.json"},
         "step": None, "time": 1001.5, "run_id": None},
        {"call": "end_run", "args": {"status": "FINISHED"}, "step": None, "time": 1002.0,
         "run_id": None},
    ]  # fmt: skip
    pending.write_text("".join(json.dumps(c) + "\n" for c in lines))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_server.uri)
    assert main(["tracking", "sync", str(pending), "--experiment", "glsim-sync-file"]) == 0
    run_id = capsys.readouterr().out.strip().split()[-1]
    run = MlflowClient(shared_server.uri).get_run(run_id)
    assert run.info.run_name == "aggregate" and run.data.tags["stage"] == "aggregate"
    assert run.data.metrics == {"synthetic_fg_vit_top1_mean": 71.5}
    table = MlflowClient(shared_server.uri).download_artifacts(run_id, "tables/ledger_table.json")
    assert json.loads(Path(table).read_text())["data"] == [[1, 71.5]]  # the ledger's table
    assert (run.info.start_time, run.info.end_time) == (1_000_000, 1_002_000)
    assert not pending.exists() and (pending.parent / "aggregate.synced.jsonl").is_file()
