"""A flow's training step on a node with several GPUs: ``GLSIM_PROCS_PER_RUN=2`` trains the
run with torchrun (gloo on CPU here), then evaluates it in the flow's process; a diverged
torchrun run is raised as divergence (never retried), and a bad process count is one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tinyflow import write_tiny_params

from flows import steps
from glsim.config import ParamsError
from glsim.protocol.data import prepare, shard
from glsim.protocol.done import is_done
from glsim.protocol.specs import final_spec
from glsim.train.loop import TrainingDiverged

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the ranks import flows and glsim from here
    monkeypatch.chdir(tmp_path)
    path, params = write_tiny_params(
        tmp_path, pretrained=False, data={"shard_max_count": 5, "shard_max_bytes": 1 << 20},
        protocol={"models": ["vit", "glsim"], "seeds": [1], "lr_grid": []},
    )  # fmt: skip
    prepare(params)
    shard(params)
    return path


def request(path: Path, **overrides) -> dict:
    r = dict(params_file=str(path), overrides={}, dataset="synthetic_fg", kind="final",
             name="vit", seed=1, lr=None, track=True)  # fmt: skip
    r.update(overrides)
    return r


def test_two_processes_train_then_the_flow_evaluates(tiny_run):
    req = request(tiny_run)
    params = steps.resolve(tiny_run, None, "synthetic_fg")
    report = steps.train_and_evaluate(params, "final", "vit", 1, None, request=req, nproc=2)
    spec = final_spec(params, "vit", 1)
    ckpt = torch.load(spec.run_dir(params) / "last.pt", weights_only=False)
    assert ckpt["extra"]["world_size"] == 2 and ckpt["state"]["epoch"] == params.train.epochs
    assert json.loads(spec.report_path(params).read_text()) == report
    assert is_done(params, spec)
    # done: a second call neither starts torchrun nor retrains (the run key is the same)
    mtime = (spec.run_dir(params) / "last.pt").stat().st_mtime_ns
    steps.train_and_evaluate(params, "final", "vit", 1, None, request=req, nproc=2)
    assert (spec.run_dir(params) / "last.pt").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_a_diverged_torchrun_run_is_divergence(tiny_run):
    req = request(tiny_run, overrides={"train.lr": 1e12, "train.clip_grad": None})
    with pytest.raises(TrainingDiverged, match="loss is"):
        steps.torchrun_train(req, 2, timeout=240)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_process_count_is_one_line(monkeypatch, value):
    monkeypatch.setenv(steps.PROCS_ENV, value)
    with pytest.raises(ParamsError, match=f"GLSIM_PROCS_PER_RUN={value!r}"):
        steps.procs_per_run()


def test_processes_default_to_one(monkeypatch):
    monkeypatch.delenv(steps.PROCS_ENV, raising=False)
    assert steps.procs_per_run() == 1
    assert os.environ.get(steps.PROCS_ENV) is None
