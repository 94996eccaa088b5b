"""The sweep flow in local mode (training in this process, Prefect's test server): a tiny
protocol end to end, then again with nothing left to train (done: checkpoint and report
under the run's current key, whatever their ages): nothing is trained and no MLflow run
of training is added."""

from __future__ import annotations

import json
import os

import pytest
from tinyflow import write_tiny_params

from flows import steps
from flows.sweep import sweep
from glsim import runs
from glsim.protocol.lr_search import search_lr
from glsim.protocol.specs import chosen_lr
from glsim.protocol.train import train_final
from glsim.runs import RunSpec


@pytest.mark.integration
def test_local_sweep_runs_the_protocol_then_skips_every_finished_run(
    prefect_harness, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts (./mlruns) go there too
    path, params = write_tiny_params(tmp_path)

    first = sweep(params_file=str(path), use_deployments=False)
    # pretrain + 2 models x 2 LRs + 2 models x 1 seed + 1 variant x 1 seed
    assert len(first["trained"]) == 8 and first["skipped"] == []
    # the plan, written before anything trained: every run but pretraining still to train
    plan = json.loads((params.base.runs_dir / "plan" / "plan.json").read_text())
    assert plan["summary"]["total"]["to_run"] == 7 and plan["summary"]["total"]["done"] == 0
    results = json.loads(runs.results_paths(params)["json"].read_text())
    assert set(results["synthetic_fg"]) == {"vit", "glsim", "ablations"}
    assert "glsim_no_aggregator" in results["synthetic_fg"]["ablations"]
    # each model's best seed registered once its seeds were evaluated, and made champion
    # (nothing to beat); the registered version is that model's run
    assert set(first["registry"]) == {"synthetic_fg/vit", "synthetic_fg/glsim"}
    assert all(d["alias"] == "champion" and d["moved"] for d in first["registry"].values())
    from glsim.tracking.registry import describe_model

    info = describe_model("glsim-synthetic_fg-glsim")
    assert info["aliases"]["champion"] == first["registry"]["synthetic_fg/glsim"]["version"]
    assert all(v["tags"]["data_dvc_md5"] and v["tags"]["val_top1"] for v in info["versions"])

    p = steps.resolve(path, None, "synthetic_fg")
    final = RunSpec("glsim", 1, lr=chosen_lr(p, "glsim"))
    ckpt = final.run_dir(p) / "last.pt"
    assert steps.is_done(p, "final", "glsim", 1, None) and steps.is_done(p, "pretrain", "", 0, None)
    report = final.report_path(p)
    assert json.loads(report.read_text())["run_key"] == runs.run_key(p, final)
    # a report older than its checkpoint is still this configuration's evaluation
    os.utime(report, ns=(ckpt.stat().st_mtime_ns - 10**9,) * 2)
    stamp = ckpt.stat().st_mtime_ns
    trained = training_runs(params.base.experiment)
    assert len(trained) == 7  # every fine-tuning run tracked (pretraining is not)

    second = sweep(params_file=str(path), use_deployments=False)
    assert second["trained"] == [] and len(second["skipped"]) == 8
    assert training_runs(params.base.experiment) == trained  # no MLflow run for training
    # the same results register as the same versions: the champions stay
    assert all(not d["moved"] for d in second["registry"].values()), second["registry"]
    assert ckpt.stat().st_mtime_ns == stamp

    # the DVC stages on the same storage: same run folders and keys, nothing retrained
    capsys.readouterr()
    assert train_final(p, "glsim", 1, track=False) == final.run_dir(p)
    assert "already finished with this configuration" in capsys.readouterr().out
    assert ckpt.stat().st_mtime_ns == stamp
    # and the LR search the lr_search stage would record is the one the sweep recorded
    flow_choice = json.loads(runs.lr_report(p, "vit").read_text())
    assert search_lr(p, "vit", track=False) == flow_choice

    # a report without the current run key (another configuration's, or written before
    # reports carried one) is not this run's evaluation: the run is due again
    vit = RunSpec("vit", 1, lr=chosen_lr(p, "vit"))
    old = json.loads(vit.report_path(p).read_text())
    del old["run_key"]
    vit.report_path(p).write_text(json.dumps(old))
    assert not steps.is_done(p, "final", "vit", 1, None)


def training_runs(experiment: str) -> set[str]:
    """The ids of the MLflow runs ``train_run`` logged (tag ``stage=train``)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], "tags.stage = 'train'", max_results=1000)
    return {r.info.run_id for r in found}
