"""Real tracking servers for the tracking tests (fixtures in ``conftest.py``): ``mlflow server`` (sqlite backend, one
worker) on a free loopback port, started by a fixture and stopped (its whole process group)
in teardown. Nothing here reaches beyond 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed: connecting is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running ``mlflow server``: its URI, process, and the folder holding its store."""

    uri: str
    proc: subprocess.Popen
    folder: Path

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash, not a shutdown)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def mlflow_server(folder: Path, port: int | None = None) -> Iterator[Server]:
    """``mlflow server`` with its sqlite store and artifacts under ``folder`` (the same folder
    again gives a server on the same store), on ``port`` or a free one."""
    import requests

    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = folder / f"server-{port}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{folder}/db.sqlite",
            "--artifacts-destination",  # proxied, as docs/operations.md sets up a shared server
            str(folder / "art"),
            "-w",
            "1",
        ],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the workers go with it
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                if requests.get(f"{uri}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield Server(uri, proc, folder)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
