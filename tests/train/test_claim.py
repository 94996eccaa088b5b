"""One trainer per run folder: a second trainer (a real process) refuses or waits while
the first holds the claim, a claim left by a dead process is taken over, and a claim is
released when its holder raises."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from tiny import tiny_params

from glsim.config import write_resolved
from glsim.protocol.data import prepare, shard
from glsim.protocol.specs import final_spec
from glsim.train import claim as claims
from glsim.train.claim import RunClaimed, claim, claim_paths

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

# a trainer stand-in: holds the claim until the test closes its stdin
HOLD = """
import sys
from pathlib import Path
from glsim.train.claim import claim
with claim(Path(sys.argv[1]), root=Path(sys.argv[2]), wait_s=float(sys.argv[3])):
    print("held", flush=True)
    sys.stdin.read()
"""


def start_holder(run_dir: Path, root: Path, wait_s: float = 0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir), str(root), str(wait_s)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=ENV, start_new_session=True,
    )  # fmt: skip


def wait_held(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line == "held\n", f"holder said {line!r}: {proc.stderr.read() if proc.poll() else ''}"


def end(proc: subprocess.Popen) -> None:
    """Let a holder go (it releases and exits); killed if it does not within 60 s."""
    if proc.poll() is None:
        proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def holder(run_dir: Path, root: Path):
    proc = start_holder(run_dir, root)
    try:
        wait_held(proc)
        yield proc
    finally:
        end(proc)


def test_a_second_trainer_refuses_in_one_line_naming_the_holder(tmp_path):
    run_dir, root = tmp_path / "runs/ds/vit/seed1", tmp_path / "runs"
    _, info_path = claim_paths(run_dir, root)
    with holder(run_dir, root) as first:
        second = start_holder(run_dir, root)
        try:
            _, err = second.communicate(timeout=60)
        finally:
            end(second)
        with pytest.raises(RunClaimed) as refused, claim(run_dir, root=root, wait_s=0):
            pass  # in this process as well
    assert second.returncode != 0
    message = str(refused.value)
    assert message in err
    assert message.startswith(
        f"{run_dir} is being trained by pid {first.pid} on host {socket.gethostname()} since "
    )
    assert message.endswith(f"wait for it, or remove {info_path} if that process is gone")
    assert "\n" not in message
    assert not info_path.exists() and not run_dir.exists()  # released; the run folder untouched


def test_a_waiting_trainer_takes_the_claim_once_the_first_releases_it(
    tmp_path, monkeypatch, capsys
):
    run_dir, root = tmp_path / "runs/ds/vit/seed1", tmp_path / "runs"
    first = start_holder(run_dir, root)
    sleep, polls = time.sleep, []

    def first_finishes(seconds: float) -> None:  # the waiter's first poll: the first one ends
        if not polls:
            polls.append(seconds)
            end(first)
        sleep(seconds)

    try:
        wait_held(first)
        monkeypatch.setattr(claims.time, "sleep", first_finishes)
        with claim(run_dir, root=root, wait_s=120) as held:
            info = json.loads(held.info_path.read_text())
    finally:
        end(first)
    assert first.returncode == 0
    assert (
        f"is being trained by pid {first.pid}" in capsys.readouterr().out
    )  # the wait said whom for
    assert info["pid"] == os.getpid() and info["run_dir"] == str(run_dir)


def test_a_claim_left_by_a_killed_trainer_is_taken_over(tmp_path):
    run_dir, root = tmp_path / "runs/pretrain", tmp_path / "runs"
    _, info_path = claim_paths(run_dir, root)
    proc = start_holder(run_dir, root)
    try:
        wait_held(proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no release: the claim file stays behind
        proc.wait()
    assert json.loads(info_path.read_text())["pid"] == proc.pid
    with claim(run_dir, root=root, wait_s=0):
        assert json.loads(info_path.read_text())["pid"] == os.getpid()
    assert not info_path.exists()


def test_another_hosts_claim_file_holds_until_its_heartbeat_stops(tmp_path):
    """Where flock is not shared between hosts (NFS mounted nolock) the claim file guards."""
    run_dir, root = tmp_path / "runs/ds/vit/seed1", tmp_path / "runs"
    _, info_path = claim_paths(run_dir, root)
    info_path.parent.mkdir(parents=True)
    other = {"pid": 4242, "host": "node-b", "started": "2026-01-01T00:00:00+00:00"}
    info_path.write_text(json.dumps(other))
    refused = pytest.raises(RunClaimed, match="by pid 4242 on host node-b since 2026-01-01")
    with refused, claim(run_dir, root=root, wait_s=0):
        pass
    stopped = time.time() - claims.STALE_S - 60
    os.utime(info_path, (stopped, stopped))
    with claim(run_dir, root=root, wait_s=0):
        assert json.loads(info_path.read_text())["host"] == socket.gethostname()


def test_a_claim_is_released_when_training_raises(tmp_path):
    run_dir, root = tmp_path / "runs/ds/vit/seed1", tmp_path / "runs"
    _, info_path = claim_paths(run_dir, root)
    with pytest.raises(ZeroDivisionError), claim(run_dir, root=root, wait_s=0):
        raise ZeroDivisionError("training failed")
    assert not info_path.exists()
    with holder(run_dir, root):  # another process gets it at once
        pass


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny protocol's params file, its data prepared; the final vit run's folder and
    the runs folder. The tests below are refused, so they leave it as they found it."""
    root = tmp_path_factory.mktemp("tiny")
    params = tiny_params(root, protocol={"lr_grid": []})
    path = write_resolved(params, root, "params.yaml")
    prepare(params)
    shard(params)
    return path, final_spec(params, "vit", 1).run_dir(params), params.base.runs_dir


TRAIN = ["--model", "vit", "--seed", "1"]


def stage_env(path: Path) -> dict[str, str]:
    """A stage's environment (run in the params file's folder): one thread, MLflow there."""
    return {
        **ENV,
        "OMP_NUM_THREADS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{path.parent}/mlflow.db",
    }


def test_the_train_stage_refuses_a_run_folder_another_trainer_holds(tiny_run):
    """``dvc repro`` beside a running trainer: one ``error:`` line, exit 2, nothing written."""
    path, run_dir, runs_dir = tiny_run
    with holder(run_dir, runs_dir) as first:
        out = subprocess.run(
            [sys.executable, str(ROOT / "pipelines/train.py"), "--params", str(path), *TRAIN],
            capture_output=True, text=True, env=stage_env(path), cwd=path.parent, timeout=300,
        )  # fmt: skip
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: {run_dir} is being trained by pid {first.pid} on host ")
    assert not run_dir.exists()


@pytest.mark.slow
@pytest.mark.integration
def test_every_torchrun_rank_refuses_when_rank_0_cannot_claim(tiny_run):
    """Rank 0 alone claims; the other ranks learn its refusal instead of waiting for it."""
    path, run_dir, runs_dir = tiny_run
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    with holder(run_dir, runs_dir) as first:
        out = subprocess.run(
            [*torchrun, str(ROOT / "pipelines/train.py"), "--params", str(path), *TRAIN],
            capture_output=True, text=True, env=stage_env(path), cwd=path.parent, timeout=300,
        )  # fmt: skip
    assert out.returncode != 0
    # each rank's line (the two may interleave on the shared stderr), and torchrun's summary
    # names each as its root cause (the rank leaves it in torchelastic's error file)
    refusal = f"error: {run_dir} is being trained by pid {first.pid} "
    assert out.stderr.count(f"traceback : {refusal}") == 2, out.stderr
    assert out.stderr.count(refusal) == 4, out.stderr
    assert not run_dir.exists()
    # the holder gone, the same command trains the run: rank 0 claims, the others follow
    out = subprocess.run(
        [*torchrun, str(ROOT / "pipelines/train.py"), "--params", str(path), *TRAIN],
        capture_output=True, text=True, env=stage_env(path), cwd=path.parent, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("run: ") == 1, out.stdout  # rank 0 prints the run line, once
    assert (run_dir / "last.pt").is_file()
    assert not claim_paths(run_dir, runs_dir)[1].exists()
