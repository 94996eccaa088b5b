"""Wall time of the tiny cluster sweep (docs/operations.md, "Cluster sweeps with Prefect", on one
machine) with 1 worker and with N workers of one GPU slot each, measured in one run.

Each trial is docs/operations.md's loopback set-up from scratch: a fresh ``prefect server``, a
fresh ``mlflow server`` (sqlite, proxied artifacts), the ``glsim-gpu`` process pool,
``prefect deploy --all``, the workers (``GLSIM_GPU_SLOTS=1``, ``--limit 1``), each command
in a shell that has sourced ``scripts/env.sh`` as the walkthrough's are, then the
timed part: ``python -m flows.sweep --params configs/tiny-sweep.yaml`` until it returns,
and ``glsim registry show`` of the champion. Its ``tiny-sweep/`` output folder is removed first.

    .venv/bin/python benchmarks/sweep_workers.py --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PARAMS = "configs/tiny-sweep.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer {url} in {timeout:.0f} s")


# every shell of the walkthrough sources it: telemetry off, Prefect's logging config
ENV_SH = ". scripts/env.sh && "


def trial(workers: int, scratch: Path) -> dict:
    shutil.rmtree(REPO / "tiny-sweep", ignore_errors=True)
    pport, mport = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(scratch / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{pport}/api",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mport}",
        "GLSIM_GPU_SLOTS": "1",
        "GLSIM_REPO": str(REPO),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    procs: list[subprocess.Popen] = []

    def spawn(cmd: str, log: str) -> subprocess.Popen:
        out = open(scratch / log, "w")  # noqa: SIM115 (lives as long as the process)
        p = subprocess.Popen(ENV_SH + cmd, shell=True, cwd=REPO, env=env, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        procs.append(p)
        return p

    def run(cmd: str) -> str:
        done = subprocess.run(
            ENV_SH + cmd, shell=True, cwd=REPO, env=env, capture_output=True, text=True
        )
        if done.returncode:
            raise RuntimeError(f"{cmd}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done.stdout

    try:
        server = spawn(f"prefect server start --host 127.0.0.1 --port {pport} --no-ui", "prefect.log")
        mlflow = spawn(
            f"mlflow server --host 127.0.0.1 --port {mport} -w 1 --backend-store-uri "
            f"sqlite:///{scratch}/mlflow-server.db --artifacts-destination {scratch}/mlartifacts",
            "mlflow.log",
        )
        wait_http(f"{env['PREFECT_API_URL']}/health", server, "prefect server")
        wait_http(f"{env['MLFLOW_TRACKING_URI']}/health", mlflow, "mlflow server")
        run("prefect work-pool create glsim-gpu --type process")
        run("prefect --no-prompt deploy --all")
        for w in range(1, workers + 1):
            spawn(f"GLSIM_WORKER_ID=w{w} prefect worker start --pool glsim-gpu --limit 1", f"worker{w}.log")
        t0 = time.perf_counter()
        run(f"python -m flows.sweep --params {PARAMS}")
        seconds = time.perf_counter() - t0
        show = json.loads(run("glsim registry show glsim-synthetic_fg-glsim --json"))
        return {"workers": workers, "seconds": round(seconds, 1), "champion": show["aliases"].get("champion")}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    results = []
    for n in args.workers:
        with tempfile.TemporaryDirectory(prefix=f"sweep-{n}w-") as scratch:
            results.append(trial(n, Path(scratch)))
        print(json.dumps(results[-1]), flush=True)
    base = results[0]["seconds"]
    for r in results:
        print(f"{r['workers']} worker(s): {r['seconds']:.1f} s  speed-up {base / r['seconds']:.2f}x  champion v{r['champion']}")


if __name__ == "__main__":
    main()
