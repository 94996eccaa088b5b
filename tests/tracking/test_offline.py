"""A tracking store that is down at start, or lost mid-run: check_tracking fails fast with one
line; a Tracker whose server dies keeps training going, prints one line, and keeps the unsent
calls in a JSON-lines file. One test runs a real ``mlflow server`` and kills it."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
import requests  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from tracking_servers import free_port  # noqa: E402

from glsim.tracking import mlflow as tracking  # noqa: E402
from glsim.tracking.mlflow import (  # noqa: E402
    PENDING_FILE,
    Tracker,
    TrackingUnavailable,
    check_tracking,
    pending_calls,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_server_uri(monkeypatch) -> str:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_http_defaults_bound_mlflow_requests():
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    for var in (
        MLFLOW_HTTP_REQUEST_TIMEOUT,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
    ):
        assert var.name in tracking.HTTP_DEFAULTS
        # read from os.environ at each request: a user's value (set before import) wins
        assert str(var.get()) == os.environ[var.name]
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() <= 3 and MLFLOW_HTTP_REQUEST_TIMEOUT.get() <= 30


def test_check_tracking_on_a_closed_port_fails_with_one_line(no_server_uri):
    with pytest.raises(TrackingUnavailable) as info:
        check_tracking(no_server_uri, timeout=2)
    msg = str(info.value)
    assert "\n" not in msg
    assert no_server_uri in msg and "connection refused" in msg
    assert "mlflow server" in msg and "unset MLFLOW_TRACKING_URI" in msg
    assert isinstance(info.value, RuntimeError)
    # a stage: Tracker fails in its constructor, before any run exists
    with pytest.raises(TrackingUnavailable):
        Tracker(experiment="x", run_name="y")


def test_check_tracking_names_the_http_status_and_hides_passwords(monkeypatch):
    class Unhealthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Unhealthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        with pytest.raises(TrackingUnavailable, match="HTTP 503") as info:
            check_tracking(f"http://me:secret@127.0.0.1:{port}", timeout=5)
        assert "secret" not in str(info.value) and f"http://me:***@127.0.0.1:{port}" in str(
            info.value
        )
    finally:
        server.shutdown()
        server.server_close()


def test_check_tracking_runs_once_per_uri(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(tracking, "_probe", lambda uri, timeout: calls.append(uri))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    check_tracking(uri)
    check_tracking(uri)
    assert calls == [uri]
    tracking._CHECKED.discard(uri)


def test_check_tracking_sqlite_needs_nothing_running(tmp_path):
    check_tracking(f"sqlite:///{tmp_path}/sub/dir/mlflow.db")  # folder made later by MLflow


def test_pending_calls_reads_back_and_skips_a_torn_last_line(tmp_path):
    path = tmp_path / PENDING_FILE
    assert pending_calls(path) == []
    path.write_text('{"call": "log_metrics", "args": {"a": 1.0}, "step": 3}\n{"call": "lo')
    assert pending_calls(path) == [{"call": "log_metrics", "args": {"a": 1.0}, "step": 3}]


def test_subprocess_stage_exits_at_once_with_one_line(tmp_path):
    """What a stage prints for a down server: ``pipelines/_common.run`` turns it into one
    ``error:`` line and exit code 2 (not minutes of retries and a traceback)."""
    uri = f"http://127.0.0.1:{free_port()}"
    code = (
        "import sys; sys.path.insert(0, 'pipelines')\n"
        "from _common import run\n"
        "from glsim.tracking.mlflow import Tracker\n"
        "run(lambda: Tracker(experiment='x', run_name='y', root=sys.argv[1]))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: MLflow tracking server {uri} is not reachable")


def test_store_failure_mid_run_keeps_calls_without_a_run_dir(tmp_path, monkeypatch, capsys):
    """A failure in any store call (here log_metrics on the embedded store) takes the
    Tracker offline: later calls do not reach MLflow, the body's own error still propagates,
    and the pending file is ``<root>/mlruns-pending/<run name>.jsonl``."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    sent = []

    def refused(*args, **kwargs):
        sent.append(args)
        raise requests.ConnectionError("[Errno 111] Connection refused")

    tracker = Tracker(
        experiment="glsim-offline", run_name="eval: vit/seed 1", root=tmp_path, run_key="k1"
    )
    with pytest.raises(KeyError), tracker as t:
        t.log_metrics({"test/top1": 90.0})
        monkeypatch.setattr(mlflow, "log_metrics", refused)
        monkeypatch.setattr(mlflow, "set_tags", refused)
        t.log_metrics({"test/top1": 91.0}, step=1)
        assert t.offline
        t.set_tags({"validation": "passed"})
        t.log_params({"a": {"b": 1}})
        raise KeyError("the stage's own error")
    assert len(sent) == 1  # only the first failing call reached "the store"
    assert mlflow.active_run() is None
    err = capsys.readouterr().err
    assert err.count("tracking: lost") == 1
    path = tmp_path / "mlruns-pending" / "eval_vit_seed_1.jsonl"
    assert (
        f"(connection refused); training continues, unsent tracking calls are kept in {path}" in err
    )
    calls = pending_calls(path)
    assert [c["call"] for c in calls] == [
        "log_metrics",
        "set_tags",
        "log_params",
        "end_run",
    ]
    assert calls[0]["args"] == {"test_top1": 91.0} and calls[0]["step"] == 1
    assert calls[-1]["args"] == {"status": "FAILED"}
    assert {(c["run_id"], c["run_key"]) for c in calls} == {(t.run_id, "k1")}  # whose they are
    # the store was not told the run ended: it is still RUNNING there, for a later replay
    client = MlflowClient(tracking.tracking_uri(tmp_path))
    assert client.get_run(t.run_id).info.status == "RUNNING"


# ---------------------------------------------------------------------------------------
# a real server, killed mid-run


def test_server_killed_mid_run_does_not_stop_the_run(server, tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    uri, proc = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    artifact = tmp_path / "report.json"
    artifact.write_text("{}")

    with Tracker(
        experiment="glsim-offline", run_name="vit-s1", run_dir=run_dir, root=tmp_path,
        run_key="k1",
    ) as t:
        t.log_params({"train": {"lr": 0.01}})
        t.log_metrics({"train/loss": 1.0}, step=1)
        history = MlflowClient(uri).get_metric_history(t.run_id, "train_loss")
        assert [(m.step, m.value) for m in history] == [(1, 1.0)]
        assert not t.offline

        os.killpg(proc.pid, signal.SIGKILL)  # the server dies mid-run
        proc.wait(timeout=10)

        t.log_metrics({"train/loss": 0.5}, step=2)  # fails once (bounded retries), offline
        assert t.offline
        t.log_metrics({"train/loss": 0.25}, step=3)
        t.log_artifact(artifact, artifact_path="eval")
        assert t.log_model(torch.nn.Linear(2, 2), name="model") is None
    assert mlflow.active_run() is None

    err = capsys.readouterr().err
    assert err.count("tracking: lost") == 1
    assert "Retrying" not in err  # urllib3's per-retry warnings are not shown
    line = next(ln for ln in err.splitlines() if ln.startswith("tracking: lost"))
    pending = run_dir / PENDING_FILE
    assert line == (
        f"tracking: lost {uri} (connection refused); training continues, "
        f"unsent tracking calls are kept in {pending}"
    )
    calls = pending_calls(pending)
    assert [c["call"] for c in calls] == [
        "log_metrics",
        "log_metrics",
        "log_artifact",
        "log_model",
        "end_run",
    ]
    assert [(c["step"], c["args"]) for c in calls[:2]] == [
        (2, {"train_loss": 0.5}),
        (3, {"train_loss": 0.25}),
    ]
    assert calls[2]["args"] == {"path": str(artifact.resolve()), "artifact_path": "eval"}
    assert calls[3]["args"]["run_dir"] == str(run_dir.resolve())
    assert calls[4]["args"] == {"status": "FINISHED"}
    assert {(c["run_id"], c["run_key"]) for c in calls} == {(t.run_id, "k1")}  # whose they are

    # the next stage in this process checks again (the success was forgotten): fails at once
    with pytest.raises(TrackingUnavailable, match="connection refused"):
        Tracker(experiment="glsim-offline", run_name="vit-s2", root=tmp_path)
