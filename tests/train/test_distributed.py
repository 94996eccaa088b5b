"""torchrun with gloo on CPU: the DDP step equals one process's step on the whole batch, the
ranks' loader shares are disjoint and complete, and a run trained by two processes
checkpoints, resumes after a kill and evaluates like a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tiny import tiny_params

from glsim.data.loader import make_loader, num_batches
from glsim.data.transforms import build_transforms
from glsim.protocol.data import prepare, shard
from glsim.runs import shards_dir

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import ddp_step  # noqa: E402


def torchrun(*args: str, nproc: int = 2, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.Popen([*cmd, *args], env=env, start_new_session=True, **kwargs)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every rank: the ranks run in sessions of their own, so killing
    torchrun's process group would leave them training."""
    import psutil

    parent = psutil.Process(proc.pid)
    procs = [*parent.children(recursive=True), parent]
    assert len(procs) >= 3, "expected torchrun and two ranks"
    for p in procs:
        p.kill()
    psutil.wait_procs(procs, timeout=30)
    proc.wait()


def finish(proc: subprocess.Popen, timeout: float = 240) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert proc.returncode == 0, f"torchrun exited {proc.returncode}"


@pytest.mark.parametrize("model", ["vit", "glsim"])
def test_ddp_step_on_two_half_batches_equals_one_step_on_the_batch(tmp_path, model, record_property):
    out = tmp_path / "ddp.pt"
    finish(torchrun(str(HERE / "ddp_step.py"), model, str(out)))
    net = ddp_step.tiny(model)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images, targets = ddp_step.batch()
    ddp_step.step(net, net, images, targets)
    single, ddp = net.state_dict(), torch.load(out)
    diff = max((single[k].double() - ddp[k].double()).abs().max().item() for k in single)
    moved = max((single[k].double() - before[k].double()).abs().max().item() for k in single)
    record_property("max_abs_weight_difference", diff)
    print(f"{model}: max |w_ddp - w_single| = {diff:.3g} (the step moved weights by up to {moved:.3g})")
    assert moved > 1e-3  # the step did something, so equality is not vacuous
    assert diff < 1e-5


def test_rank_shares_are_disjoint_and_complete_every_epoch(tmp_path):
    params = tiny_params(tmp_path, data={"shard_max_count": 5, "shard_max_bytes": 1 << 20})
    prepare(params)
    shard(params)
    src = shards_dir(params)
    transform = build_transforms(image_size=32, resize_ratio=1.0, train=False)

    def keys(rank: int, world: int, epoch: int, workers: int) -> list[str]:
        loader = make_loader(
            src, "train", transform=transform, batch_size=2, shuffle=True, seed=3, epoch=epoch,
            workers=workers, with_meta=True, rank=rank, world_size=world,
        )  # fmt: skip
        batches = [meta["key"] for _, _, meta in loader]
        assert len(batches) == num_batches(
            src, "train", batch_size=2, workers=workers, drop_last=False, shuffle=True, seed=3,
            epoch=epoch, rank=rank, world_size=world,
        )  # fmt: skip
        return [k for batch in batches for k in batch]

    single = sorted(keys(0, 1, 0, 0))
    for epoch, world, workers in ((0, 2, 0), (1, 2, 0), (0, 3, 0), (1, 2, 2)):
        shares = [keys(r, world, epoch, workers) for r in range(world)]
        flat = [k for share in shares for k in share]
        assert len(flat) == len(set(flat)), "a sample went to two ranks"
        assert sorted(flat) == single, "the ranks together miss samples"
        assert max(map(len, shares)) - min(map(len, shares)) <= max(1, workers)
    # the ranks' orders differ between epochs (shards and samples reshuffled)
    assert keys(0, 2, 0, 0) != keys(0, 2, 1, 0)


EPOCHS = 6  # the killed run is stopped after its first; the rest is the resumed part


def _torchrun_params(tmp_path: Path) -> Path:
    params = tiny_params(
        tmp_path,
        data={"shard_max_count": 5, "shard_max_bytes": 1 << 20},
        train={"epochs": EPOCHS, "batch_size": 6, "warmup_steps": 1},
        protocol={"models": ["vit", "glsim"], "seeds": [1], "lr_grid": []},
    )
    prepare(params)
    shard(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return path


def _train_cmd(params_file: Path, runs_dir: Path) -> list[str]:
    return [
        str(ROOT / "pipelines/train.py"), "--params", str(params_file), "--model", "vit",
        "--seed", "1", "--set", f"base.runs_dir={runs_dir}",
    ]  # fmt: skip


@pytest.mark.slow
def test_torchrun_run_checkpoints_resumes_after_a_kill_and_evaluates_like_one_process(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    params_file = _torchrun_params(tmp_path)
    whole, killed = tmp_path / "runs-whole", tmp_path / "runs-killed"
    finish(torchrun(*_train_cmd(params_file, whole)))

    # the same run, killed (SIGKILL to every rank) as soon as its first checkpoint exists,
    # while it is still training (so what follows is a resumption, not a skip)
    proc = torchrun(*_train_cmd(params_file, killed))
    ckpt = killed / "synthetic_fg/vit/seed1/last.pt"
    deadline = time.monotonic() + 240
    while not ckpt.exists():
        assert proc.poll() is None, f"torchrun exited {proc.returncode} before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.01)
    kill_tree(proc)
    first = torch.load(ckpt, weights_only=False)
    assert first["state"]["epoch"] < EPOCHS, f"the run finished before the kill: {first['state']}"
    assert first["extra"]["world_size"] == 2
    resumed = torchrun(*_train_cmd(params_file, killed), stdout=subprocess.PIPE, text=True)
    out, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out
    assert f"resuming from {ckpt}: epoch {first['state']['epoch']}/{EPOCHS}" in out

    a = torch.load(whole / "synthetic_fg/vit/seed1/last.pt", weights_only=False)
    b = torch.load(ckpt, weights_only=False)
    assert a["state"]["epoch"] == b["state"]["epoch"] == EPOCHS
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"resumed run differs at {k}"
    history = json.loads((whole / "synthetic_fg/vit/seed1/train.json").read_text())
    assert history["epochs_done"] == EPOCHS and len(history["history"]) == EPOCHS

    # evaluation: the evaluate stage (one process) on the torchrun run's checkpoint gives
    # the report an in-process evaluation of the same checkpoint gives
    from glsim.config import load_params
    from glsim.protocol.specs import final_spec
    from glsim.protocol.train import evaluate_final

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, str(ROOT / "pipelines/evaluate.py"), "--params", str(params_file),
         "--model", "vit", "--seed", "1", "--set", f"base.runs_dir={whole}"],
        check=True, env=env, timeout=240,
    )  # fmt: skip
    params = load_params(params_file, {"base.runs_dir": str(whole)})
    spec = final_spec(params, "vit", 1)
    stage_report = json.loads(spec.report_path(params).read_text())
    stage_table = spec.per_class_path(params).read_text()
    in_process = evaluate_final(params, "vit", 1, track=False)
    assert stage_report["top1"] == in_process["top1"]
    assert spec.per_class_path(params).read_text() == stage_table
