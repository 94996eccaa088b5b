"""A DVC remote on a local directory, as docs/operations.md's "Sharing data and models" section sets
one up: in a fresh clone of this repo, a tracked output is pushed, its cache and copy are
deleted, and ``dvc pull`` brings it back; a second clone (a worker) pulls it too. Only a
tiny ``dvc add``-ed file is used (the project's pipeline is not run)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def sh(cmd: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    )
    return out.stdout + out.stderr


def git(*args: str, cwd: Path) -> str:
    return sh(["git", "-c", "user.name=glsim", "-c", "user.email=dev@glsim", *args], cwd)


def test_push_then_pull_from_a_local_directory_remote(tmp_path):
    remote = tmp_path / "shared" / "glsim-dvc"  # stands for /mnt/shared/glsim-dvc
    head = tmp_path / "head"  # the machine that ran `dvc repro`
    git("clone", "-q", str(ROOT), str(head), cwd=tmp_path)
    sh(["dvc", "remote", "add", "-d", "shared", str(remote)], head)
    assert "shared" in sh(["dvc", "remote", "list"], head)

    blob = head / "shared-test" / "backbone.bin"
    blob.parent.mkdir()
    blob.write_bytes(os.urandom(4096))
    digest = hashlib.md5(blob.read_bytes()).hexdigest()
    sh(["dvc", "add", "shared-test/backbone.bin"], head)
    sh(["dvc", "push", "shared-test/backbone.bin.dvc"], head)
    assert any(remote.rglob("*")), "nothing was pushed to the remote"

    # cache and copy gone: pull restores the file from the remote
    shutil.rmtree(head / ".dvc" / "cache")
    blob.unlink()
    sh(["dvc", "pull", "shared-test/backbone.bin.dvc"], head)
    assert hashlib.md5(blob.read_bytes()).hexdigest() == digest

    # a worker: a clone of the commit that records the .dvc file and the remote
    git("add", ".dvc/config", "shared-test/backbone.bin.dvc", "shared-test/.gitignore", cwd=head)
    git("commit", "-qm", "track the blob; shared remote", cwd=head)
    worker = tmp_path / "worker"
    git("clone", "-q", str(head), str(worker), cwd=tmp_path)
    assert not (worker / "shared-test" / "backbone.bin").exists()
    sh(["dvc", "pull", "shared-test/backbone.bin.dvc"], worker)
    got = (worker / "shared-test" / "backbone.bin").read_bytes()
    assert hashlib.md5(got).hexdigest() == digest
