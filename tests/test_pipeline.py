"""The stage chain end to end at a tiny size, through the same library calls the DVC stages
make: prepare -> shard -> validate -> pretrain -> train (vit, glsim) -> evaluate -> aggregate."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_params

from glsim.data.registry import manifest_path, prepare_dataset
from glsim.data.shards import write_shards
from glsim.eval.evaluate import evaluate_run
from glsim.eval.report import aggregate_reports, eval_report_path
from glsim.train.pretrain import pretrain_backbone
from glsim.train.run import RunSpec, train_run
from glsim.validation import validate_dataset
from glsim.validation.expected import expected_counts


@pytest.fixture
def chain(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = tiny_params(tmp_path)
    d = params.data
    prepare_dataset(d.dataset, d.raw_dir, params=params, force=True)
    write_shards(
        manifest_path(d.dataset, d.raw_dir),
        d.shards_dir / d.dataset,
        max_count=8,
        max_bytes=1 << 20,
    )
    validate_dataset(
        manifest_path(d.dataset, d.raw_dir), d.shards_dir / d.dataset, expected_counts(params),
        min_side=d.min_image_side, report_path=tmp_path / "reports/validation.json",
    )  # fmt: skip
    report = pretrain_backbone(params, work_dir=tmp_path / "runs/pretrain")
    assert 0 <= report["upstream_test_acc"] <= 100
    params.model.backbone.weights = params.pretrain.output
    return params


@pytest.mark.integration
def test_stage_chain_end_to_end(chain, tmp_path):
    params = chain
    for model in ("vit", "glsim"):
        run_dir = train_run(params, RunSpec(model=model, seed=1))
        assert (run_dir / "last.pt").is_file() and (run_dir / "params.resolved.yaml").is_file()
        history = json.loads((run_dir / "train.json").read_text())["history"]
        assert len(history) == params.train.epochs
        report = evaluate_run(
            params, RunSpec(model=model, seed=1), eval_report_path(params, model, 1)
        )
        assert report["count"] == 9 and 0 <= report["top1"] <= 100
        loc = report["localisation"]  # the built-in set has object boxes
        assert 0 <= loc["hit_rate"] <= 100 and 0 <= loc["hit_rate_shuffled"] <= 100
    paths = aggregate_reports(params)
    results = json.loads(paths[0].read_text())
    entry = results["synthetic_fg"]["glsim"]
    assert set(entry) == {"top1_mean", "top1_std", "seeds", "lr"} and entry["seeds"].keys() == {"1"}
    assert "glsim" in paths[1].read_text() and "vit" in paths[1].read_text()

    import mlflow

    runs = mlflow.search_runs(experiment_names=[params.base.experiment])
    assert {"synthetic_fg/vit/seed1", "synthetic_fg/glsim/seed1", "synthetic_fg/aggregate"} <= set(
        runs["tags.mlflow.runName"]
    )
    glsim_run = runs[runs["tags.mlflow.runName"] == "synthetic_fg/glsim/seed1"].iloc[0]
    assert glsim_run["metrics.test_top1"] == pytest.approx(
        json.loads(eval_report_path(params, "glsim", 1).read_text())["top1"]
    )
    assert glsim_run["params.train.epochs"] == str(params.train.epochs)


@pytest.mark.integration
def test_killed_training_resumes_to_the_same_result(chain, tmp_path):
    params = chain
    params.train.epochs = 3
    whole = train_run(
        params.model_copy(
            update={"base": params.base.model_copy(update={"runs_dir": tmp_path / "a"})}
        ),
        RunSpec("glsim", 1),
        track=False,
    )
    part_params = params.model_copy(
        update={"base": params.base.model_copy(update={"runs_dir": tmp_path / "b"})}
    )
    killed = train_run(part_params, RunSpec("glsim", 1), track=False, stop_after_epochs=1)
    assert json.loads((killed / "train.json").read_text())["epochs_done"] == 1
    resumed = train_run(part_params, RunSpec("glsim", 1), track=False)
    h_whole = json.loads((whole / "train.json").read_text())["history"]
    h_resumed = json.loads((resumed / "train.json").read_text())["history"]
    assert [h["train/loss"] for h in h_whole] == [h["train/loss"] for h in h_resumed]
    import torch

    a = torch.load(whole / "last.pt", weights_only=False)["model"]
    b = torch.load(resumed / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
