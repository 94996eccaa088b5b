"""The cluster set-up of docs/operations.md on loopback: a real ``prefect server start``, the
``glsim-gpu`` process work pool, ``prefect deploy --all`` of the repository's
``prefect.yaml`` and real process workers (``prefect worker start``), each with its own
``gpu-<id>`` limit. Servers and workers are started and stopped here, bounded in time.

* A tiny sweep, itself a deployment run on a 1-slot worker, runs the protocol end to end;
  the training flow runs it submits are queued together, but the slots they held (their
  ``gpu-slot`` artifacts) never overlap.
* A worker killed mid-run (with its flow-run process: the node is lost): the flow run is
  marked crashed, as Prefect's zombie-flow automation does, the sweep's training task
  retries it, another worker takes it, and training resumes from ``last.pt``.
* A worker whose tracking server does not answer: its flow run fails with one ``error:``
  line in the worker's log and no traceback, and the sweep's log says which worker
  started the run and how it ended, also without a traceback (the logging config of
  ``scripts/prefect-logging.yml``, which ``scripts/env.sh`` names).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from tinyflow import write_tiny_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "glsim-gpu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, grace: float = 10) -> None:
    """End a process this module started, and the group it leads (by its id)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)


class Cluster:
    """A server, the pool, the deployments; workers started on demand, stopped at the end."""

    def __init__(self, root: Path):
        self.root = root
        port = _free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.env = {
            **os.environ,
            "PREFECT_API_URL": self.api,
            "PREFECT_HOME": str(root / "prefect-home"),
            # as scripts/env.sh exports it: expected failures are one line, no traceback
            "PREFECT_LOGGING_SETTINGS_PATH": str(REPO / "scripts" / "prefect-logging.yml"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "GLSIM_REPO": str(REPO),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "GLSIM_GPU_SLOTS": "1",
        }
        self.procs: list[subprocess.Popen] = []
        log = open(root / "server.log", "w")  # noqa: SIM115 (closed with the process)
        self.server = self._spawn(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            log,
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.api}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.server.poll() is not None:
                raise RuntimeError(f"prefect server did not start:\n{self.log('server')}")
            time.sleep(0.5)

    def _spawn(self, cmd: list[str], log, env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def cli(self, *args: str, timeout: float = 180) -> str:
        out = subprocess.run(
            [PREFECT, *args], cwd=REPO, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
        return out.stdout

    @contextmanager
    def worker(self, worker_id: str, **env: str):
        """``GLSIM_WORKER_ID=<id> prefect worker start --pool glsim-gpu``, stopped on exit;
        ``env``: more of the worker's environment."""
        log = open(self.root / f"worker-{worker_id}.log", "w")  # noqa: SIM115
        env = {**self.env, "GLSIM_WORKER_ID": worker_id, **env}
        cmd = [PREFECT, "worker", "start", "--pool", POOL, "--name", worker_id, "--type", "process"]
        proc = self._spawn(cmd, log, env)
        try:
            yield proc
        finally:
            _stop(proc)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text() if path.is_file() else ""

    def close(self) -> None:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)  # this process's flow-run logs, while it answers
        for proc in reversed(self.procs):
            _stop(proc)

    @contextmanager
    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api}), get_client(sync_client=True) as c:
            yield c

    @contextmanager
    def settings(self):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api}):
            yield


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The set-up of docs/operations.md: server, pool, ``prefect deploy --all``, no workers."""
    if not Path(PREFECT).is_file():
        pytest.skip(f"no prefect command beside {sys.executable}")
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.cli("work-pool", "create", POOL, "--type", "process")
        c.cli("--no-prompt", "deploy", "--all")
        yield c
    finally:
        c.close()
        shutil.rmtree(c.root / "prefect-home", ignore_errors=True)


def _train_one_runs(client, params_file: Path, name: str | None = None):
    """The train-one flow runs of one test (its params file), optionally of one run."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterName,
    )

    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["glsim-train-one"])),
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])) if name else None,
    )
    runs = [r for r in runs if r.parameters["params_file"] == str(params_file)]
    return sorted(runs, key=lambda r: r.expected_start_time)


def _wait_for_flow_run_processes(worker: subprocess.Popen, timeout: float = 60) -> None:
    """Until no flow-run process the worker started is alive (the worker's own processes
    stay)."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + timeout
    runs: list[str] = []
    while time.monotonic() < deadline:
        runs = []
        for child in psutil.Process(worker.pid).children(recursive=True):
            try:
                cmd = " ".join(child.cmdline())
            except psutil.Error:  # it has just exited
                continue
            if "worker" not in cmd:
                runs.append(cmd)
        if not runs:
            return
        time.sleep(0.2)
    raise TimeoutError(f"flow-run processes still alive: {runs}")


def test_a_sweep_through_a_one_slot_worker_never_overlaps_its_runs(cluster, tmp_path):
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )
    from prefect.deployments import run_deployment

    path, params = write_tiny_params(tmp_path)
    cluster.cli("gcl", "create", "gpu-w1", "--limit", "1")  # docs/operations.md: one slot per GPU
    with cluster.worker("w1"), cluster.settings():
        sweep_run = run_deployment(
            "glsim-sweep/sweep",
            parameters={"params_file": str(path), "use_deployments": True, "poll_s": 1.0},
            timeout=480, poll_interval=2, as_subflow=False,
        )  # fmt: skip
    assert sweep_run.state.is_completed(), (
        f"sweep ended {sweep_run.state}\n{cluster.log('worker-w1')[-6000:]}"
    )
    results = json.loads((tmp_path / "reports/results.json").read_text())
    assert set(results["synthetic_fg"]) == {"vit", "glsim", "ablations"}

    with cluster.client() as client:
        runs = _train_one_runs(client, path)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["gpu-slot"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in runs]),
            )
        )
    assert len(runs) == 8 and all(r.state.is_completed() for r in runs)  # 1 + 4 + 2 + 1
    holds = []
    for a in artifacts:
        rows = json.loads(a.data) if isinstance(a.data, str) else a.data
        holds += [r for r in rows if r["worker"] == "w1"]
    assert len(holds) == 8 and {h["limit"] for h in holds} == {"gpu-w1"}
    holds.sort(key=lambda h: h["acquired_unix"])
    for before, after in zip(holds, holds[1:], strict=False):
        assert after["acquired_unix"] >= before["released_unix"], (before, after)
    # and it is the limit that kept them apart: some flow runs were running at once
    spans = [(r.start_time, r.end_time) for r in runs]
    assert any(a0 < b1 and b0 < a1 for i, (a0, a1) in enumerate(spans) for b0, b1 in spans[i + 1 :])


def test_a_run_whose_worker_died_is_retried_elsewhere_and_resumes(cluster, tmp_path):
    psutil = pytest.importorskip("psutil")
    from prefect import flow

    from flows import steps
    from flows.sweep import train
    from flows.train_one import DEPLOYMENT, label, request
    from glsim.protocol.data import prepare, shard
    from glsim.train.checkpoint import read_checkpoint

    # one LR-search run long enough to be caught mid-way (tiny epochs: a fraction of a second)
    path, _ = write_tiny_params(
        tmp_path,
        pretrained=False,
        train={"epochs": 150, "batch_size": 6, "warmup_steps": 1},
        protocol={"lr_grid": [0.01], "search_epochs": None},
    )
    params = steps.resolve(path, None, None)
    prepare(params)
    shard(params)
    req = request(str(path), None, "synthetic_fg", "lrsearch", "vit", 1, 0.01, track=False)
    run = label(req)
    p, spec = steps.run_of(params, "lrsearch", "vit", 1, 0.01)
    ckpt = spec.run_dir(p) / "last.pt"

    events: dict[str, object] = {}
    stack = ExitStack()
    w1 = stack.enter_context(cluster.worker("w1-dies"))

    def lose_the_node() -> None:
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if ckpt.is_file():
                    try:
                        epoch = read_checkpoint(ckpt)["state"]["epoch"]
                    except Exception:  # caught mid-write
                        epoch = 0
                    if epoch >= 2:
                        break
                time.sleep(0.1)
            else:
                raise TimeoutError(f"no checkpoint at {ckpt}")
            children = psutil.Process(w1.pid).children(recursive=True)
            os.killpg(w1.pid, signal.SIGKILL)
            for child in children:  # the flow-run process runs in its own session
                child.kill()
            w1.wait(10)
            events["killed_at_epoch"] = read_checkpoint(ckpt)["state"]["epoch"]
            from prefect.states import Crashed

            with cluster.client() as client:  # what the zombie-flow automation does
                (lost,) = [r for r in _train_one_runs(client, path, run) if r.state.is_running()]
                client.set_flow_run_state(lost.id, Crashed(message="worker lost"), force=True)
            stack.enter_context(cluster.worker("w2"))
        except BaseException as err:
            events["error"] = err

    @flow
    def one_run_of_a_sweep() -> str:
        return train.with_options(retry_delay_seconds=1)(run, req, True, DEPLOYMENT, 1.0)

    watcher = threading.Thread(target=lose_the_node, daemon=True)
    with stack, cluster.settings():
        watcher.start()
        outcome = one_run_of_a_sweep()
        watcher.join(30)
    assert "error" not in events, events.get("error")
    assert outcome == "trained"
    with cluster.client() as client:
        attempts = _train_one_runs(client, path, run)
    assert [r.state.type.value for r in attempts] == ["CRASHED", "COMPLETED"]
    killed = events["killed_at_epoch"]
    assert 2 <= killed < 150
    assert f"epoch {killed}/150" in cluster.log("worker-w2")  # "resuming from ...: epoch N/150"
    history = json.loads((spec.run_dir(p) / "train.json").read_text())["history"]
    assert len(history) == 150 and read_checkpoint(ckpt)["state"]["epoch"] == 150


def test_a_run_whose_tracking_server_is_down_is_one_line_in_the_worker_log(cluster, tmp_path):
    from prefect import flow

    from flows import steps
    from flows.sweep import train
    from flows.train_one import DEPLOYMENT, RunFailed, label, request
    from glsim.protocol.data import prepare, shard

    path, _ = write_tiny_params(tmp_path, pretrained=False, protocol={"lr_grid": [0.01]})
    params = steps.resolve(path, None, None)
    prepare(params)
    shard(params)
    req = request(str(path), None, "synthetic_fg", "lrsearch", "vit", 1, 0.01, track=True)
    run = label(req)
    down = f"http://127.0.0.1:{_free_port()}"  # nothing listens there

    said: list[str] = []
    tracebacks: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())
            if record.exc_info:
                tracebacks.append(record.getMessage())

    @flow
    def one_run_of_a_sweep() -> str:
        return train.with_options(retries=0)(run, req, True, DEPLOYMENT, 1.0)

    handler = Keep(logging.INFO)
    loggers = [logging.getLogger(f"prefect.{name}") for name in ("task_runs", "flow_runs")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with cluster.worker("w-down", MLFLOW_TRACKING_URI=down) as worker, cluster.settings():
            with pytest.raises(RunFailed, match="TrackingUnavailable"):
                one_run_of_a_sweep()
            # what the flow-run process logs last (Prefect's engine, after the Failed
            # state) reaches the worker's log once that process has exited
            _wait_for_flow_run_processes(worker)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)

    log = cluster.log("worker-w-down")
    errors = [line for line in log.splitlines() if "error: " in line]
    assert len(errors) == 1 and down in errors[0], log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    progress = [line for line in said if line.startswith(f"{run}: ")]
    assert progress[0] == f"{run}: started on w-down", said
    assert re.match(
        rf"{re.escape(run)}: Failed on w-down after \d+ s: TrackingUnavailable: ", progress[1]
    )
    # the sweep's side: the task's failure is its one line too (scripts/prefect-logging.yml)
    failed = [line for line in said if line.startswith("Task run failed with exception: ")]
    assert len(failed) == 1 and "TrackingUnavailable" in failed[0], said
    assert not tracebacks, tracebacks
