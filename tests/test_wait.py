"""``glsim wait-for``: returns once the health URL answers 200 (not on a refused connection
or an error status), and a server that never answers is one ``error:`` line, exit 2."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from glsim.cli import main


@pytest.fixture
def warming_server():
    """A loopback server whose ``/health`` answers 503 twice (starting), then 200."""
    hits: list[int] = []

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(1)
            status = 200 if self.path == "/health" and len(hits) > 2 else 503
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_wait_for_returns_once_the_server_answers(warming_server, capsys):
    base, hits = warming_server
    assert main(["wait-for", f"{base}/health", "--interval", "0.05", "--timeout", "60"]) == 0
    assert len(hits) == 3  # two 503s were waited through
    out = capsys.readouterr().out
    assert out.startswith(f"{base}/health: up after ") and out.count("\n") == 1


def test_a_server_that_never_answers_is_one_error_line(capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/api/health"
    assert main(["wait-for", url, "--timeout", "0.3", "--interval", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {url} did not answer within 0.3 s") and err.count("\n") == 1


def test_a_url_that_is_not_http_is_refused(capsys):
    assert main(["wait-for", "127.0.0.1:5000"]) == 2
    assert "is not an http(s) URL" in capsys.readouterr().err
