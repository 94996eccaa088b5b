"""The telemetry switches have one home, ``scripts/telemetry.env``: the Makefile and
``scripts/env.sh`` export exactly its keys and values, and ``import glsim`` (which sets
them for glsim's Python entry points, ``glsim/__init__.py``) sets the same ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from envfile import telemetry_switches

ROOT = Path(__file__).resolve().parents[1]
# what `import glsim` also sets that is no telemetry: the thread pins (docs/reproducibility.md)
THREAD_PINS = {"MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE"}


def _bare_env() -> dict[str, str]:
    """This process's environment without the switches (tests/conftest.py set them)."""
    drop = {*telemetry_switches(), *THREAD_PINS}
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_the_file_names_some_switches():
    switches = telemetry_switches()
    assert {"MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "DVC_NO_ANALYTICS"} <= set(switches)
    assert all(k.isidentifier() and v and " " not in v for k, v in switches.items())


def test_import_glsim_sets_the_files_switches_and_nothing_else():
    code = (
        "import json, os; before = dict(os.environ); import glsim; "
        "print(json.dumps({k: v for k, v in os.environ.items() if before.get(k) != v}))"
    )
    env = {**_bare_env(), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == {**telemetry_switches(), **THREAD_PINS}


def test_env_sh_exports_the_files_switches():
    out = subprocess.run(
        ["bash", "-c", ". scripts/env.sh && env -0"], cwd=ROOT, env=_bare_env(),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    env = dict(line.split("=", 1) for line in out.stdout.split("\0") if "=" in line)
    assert {k: env.get(k) for k in telemetry_switches()} == telemetry_switches()


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_the_makefile_exports_the_files_switches():
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval", "print-env: ; @env -0", "print-env"],
        cwd=ROOT, env=_bare_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    env = dict(line.split("=", 1) for line in out.stdout.split("\0") if "=" in line)
    assert {k: env.get(k) for k in telemetry_switches()} == telemetry_switches()
