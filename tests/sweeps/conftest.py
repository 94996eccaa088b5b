"""Fixtures of the flow tests: a Prefect test server for the session (loopback, its own
database, stopped at the end)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Prefect's logging config as scripts/env.sh names it (before Prefect is imported): an
# expected failure is one line, without a traceback
os.environ.setdefault(
    "PREFECT_LOGGING_SETTINGS_PATH",
    str(Path(__file__).resolve().parents[2] / "scripts" / "prefect-logging.yml"),
)
# the retry tests call the training task outside a flow: its logs have no flow run to go to
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
