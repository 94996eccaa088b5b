"""Fixtures for the data tests: a local HTTP server on 127.0.0.1 (no other network)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from miniatures import FileServer, start_server


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    state = FileServer()
    server, thread = start_server(state)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's GLSIM_REGISTRY_OVERRIDES must not leak into the tests."""
    monkeypatch.delenv("GLSIM_REGISTRY_OVERRIDES", raising=False)
