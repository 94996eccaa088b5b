"""Prefect's logging config for glsim (``scripts/prefect-logging.yml``, named by
``scripts/env.sh``): Prefect's own default plus :class:`glsim.prefect_logging.OneLineFailures`,
which leaves an expected failure its one line and no traceback. A real worker's log is
checked in ``tests/sweeps/test_worker.py`` (slow)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from glsim.prefect_logging import OneLineFailures

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "scripts" / "prefect-logging.yml"
FILTERED = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine")


def test_it_is_prefects_default_plus_the_filter():
    import prefect.logging.configuration as configuration

    default = yaml.safe_load(configuration.DEFAULT_LOGGING_SETTINGS_PATH.read_text())
    ours = yaml.safe_load(CONFIG.read_text())
    assert set(ours.pop("filters")) == {"one_line_failures"}
    assert ours["loggers"].pop("prefect.engine") == {"filters": ["one_line_failures"]}
    for name in FILTERED[:2]:
        assert ours["loggers"][name].pop("filters") == ["one_line_failures"]
    assert ours == default, "Prefect's default logging.yml changed: copy it again, keep the filter"


def test_env_sh_names_it():
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_SETTINGS_PATH"}
    out = subprocess.run(
        ["bash", "-c", ". scripts/env.sh && printf %s \"$PREFECT_LOGGING_SETTINGS_PATH\""],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(out.stdout) == CONFIG


def test_prefect_loads_it_with_the_filter_on_its_run_loggers():
    code = (
        "import json, logging; from prefect.logging.configuration import setup_logging; "
        "setup_logging(); print(json.dumps({n: [type(f).__name__ for f in "
        f"logging.getLogger(n).filters] for n in {FILTERED!r}}}))"
    )
    env = {**os.environ, "PREFECT_LOGGING_SETTINGS_PATH": str(CONFIG), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    filters = json.loads(out.stdout.strip().splitlines()[-1])
    assert all("OneLineFailures" in filters[n] for n in FILTERED), filters


def _record(msg: str, exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        return logging.LogRecord("prefect.task_runs", logging.ERROR, "", 0, msg, (), sys.exc_info())


def test_an_expected_failure_keeps_its_line_and_loses_its_traceback():
    from prefect.exceptions import FailedRun

    from flows.sweep import SweepIncomplete
    from flows.train_one import RunFailed
    from glsim.config import ParamsError

    one_line = OneLineFailures(
        yaml.safe_load(CONFIG.read_text())["filters"]["one_line_failures"]["expected"],
        user_errors=True,
    )
    for exc in (
        RunFailed("x: flow run ended Failed"),
        SweepIncomplete("2 step(s)"),
        ParamsError("k"),
    ):
        record = _record(f"Task run failed with exception: {exc!r}", exc)
        assert one_line.filter(record) and record.exc_info is None
        engine = _record("Engine execution exited with unexpected exception", exc)
        assert not one_line.filter(engine)  # the flow run's "Finished in state" line says it
    engine = _record("Engine execution exited with unexpected exception", FailedRun("Failed"))
    assert not one_line.filter(engine)


def test_any_other_exception_keeps_its_traceback():
    one_line = OneLineFailures(["flows.train_one.RunFailed"], user_errors=True)
    for exc in (ValueError("a bug"), KeyError("k")):
        for msg in (
            "Task run failed with exception",
            "Engine execution exited with unexpected exception",
        ):
            record = _record(msg, exc)
            assert one_line.filter(record) and record.exc_info is not None
    assert OneLineFailures().filter(logging.LogRecord("x", logging.INFO, "", 0, "fine", (), None))
