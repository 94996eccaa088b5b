"""Fixtures of the tracking tests: real ``mlflow server`` processes on loopback
(:mod:`tracking_servers`), started here and stopped in teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tracking_servers import Server, mlflow_server


@pytest.fixture
def server(tmp_path):
    """``(uri, process)`` of an ``mlflow server`` for one test (store in ``tmp_path``)."""
    with mlflow_server(tmp_path) as s:
        yield s.uri, s.proc


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory) -> Iterator[Server]:
    """One ``mlflow server`` for every test that only needs a live store (each test uses
    its own experiment and model names), so the suite pays its start-up once."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow_shared")) as s:
        yield s
