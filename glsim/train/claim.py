"""One trainer per run folder: the claim a process holds while it trains a run.

Two trainers started on one run folder (a Prefect task retried while its first attempt
still trains, two sweeps, ``dvc repro`` beside a sweep) would write one ``last.pt`` and
log one run twice. :func:`claim` lets one of them in; the other waits (``wait_s``, with
a message) and then refuses with :class:`RunClaimed`, one line naming the holder.

A claim is two files in ``<root>/.claims/`` (``root`` is ``base.runs_dir``: outside every
run folder, so DVC's hash of a run folder and its file list never see them):

* ``<run>.lock``, an OS lock (:class:`filelock.FileLock`, ``flock``). The kernel drops it
  when its process ends, however it ends: a killed trainer leaves no claim behind.
* ``<run>.claim.json``: pid, host and start time of the holder, named in the refusal;
  a thread touches it every :data:`HEARTBEAT_S`. It also guards a shared filesystem whose
  locks are not seen from other hosts (NFS mounted ``nolock``): a claim file is taken
  over only when it is stale (written on this host by a process that is gone, or with a
  heartbeat older than :data:`STALE_S`). It is removed on release.

Under torchrun rank 0 alone claims (:func:`claim_run`); the other ranks follow its
outcome, so all ranks train or all refuse.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

if TYPE_CHECKING:  # torch is imported only by a run that has ranks
    from glsim.train.distributed import Dist

WAIT_ENV = "GLSIM_CLAIM_WAIT_S"
HEARTBEAT_S = 30.0
STALE_S = 600.0  # 20 heartbeats: a live holder on another host keeps its claim through hiccups
POLL_S = 2.0


class RunClaimed(RuntimeError):
    """Another process trains this run folder; the message names it and what to do.
    An input error for the stages (one ``error:`` line), which a flow retries."""


@dataclass(frozen=True)
class Claim:
    """A held claim: the run folder and the two files that hold it."""

    run_dir: Path
    lock_path: Path
    info_path: Path


def claim_paths(run_dir: Path, root: Path | None = None) -> tuple[Path, Path]:
    """The lock file and the claim file of ``run_dir``, under ``<root>/.claims/`` (by the
    run folder's path relative to ``root``; ``root`` defaults to the folder's parent)."""
    run_dir, root = Path(run_dir).absolute(), Path(root or Path(run_dir).parent).absolute()
    try:
        rel = run_dir.relative_to(root)
    except ValueError:
        rel = Path(run_dir.name)
    base = root / ".claims" / rel
    return base.with_name(base.name + ".lock"), base.with_name(base.name + ".claim.json")


def wait_seconds(wait_s: float | None = None) -> float:
    """``wait_s``, else ``GLSIM_CLAIM_WAIT_S`` (seconds), else 0: refuse at once."""
    if wait_s is not None:
        return float(wait_s)
    value = os.environ.get(WAIT_ENV, "0")
    try:
        return max(0.0, float(value))
    except ValueError:
        from glsim.config import ParamsError

        raise ParamsError(f"{WAIT_ENV}={value!r} is not a number of seconds; e.g. 3600") from None


def _host() -> str:
    return socket.gethostname()


def _read_info(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_stale(path: Path, info: dict | None) -> bool:
    """Whether the claim file at ``path`` names no live trainer, read with the OS lock
    held: no process of this host holds the claim then, so one written on this host is
    stale (its pid is gone, or reused); another host's is stale once its heartbeat stops."""
    if info is not None and info.get("host") == _host():
        return True
    try:
        return time.time() - path.stat().st_mtime > STALE_S
    except FileNotFoundError:
        return True


def describe(run_dir: Path, info_path: Path) -> str:
    """The refusal: who trains ``run_dir`` and what to do."""
    info = _read_info(info_path)
    if info is None:
        who = "another process (it has not written its claim file yet)"
    else:
        who = f"pid {info.get('pid')} on host {info.get('host')} since {info.get('started')}"
    return (
        f"{run_dir} is being trained by {who}; wait for it, or remove {info_path} "
        "if that process is gone"
    )


def _write_info(path: Path, run_dir: Path) -> bool:
    """Create the claim file; False when one exists (another trainer took it first)."""
    info = {
        "pid": os.getpid(),
        "host": _host(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_dir": str(run_dir),
    }
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    return True


def _take(run_dir: Path, lock: FileLock, info_path: Path) -> bool:
    """One attempt at the claim: the OS lock, then the claim file (a stale one replaced)."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    if _write_info(info_path, run_dir):
        return True
    stale = _read_info(info_path)
    if _is_stale(info_path, stale):
        with suppress(FileNotFoundError):
            info_path.unlink()
        if _write_info(info_path, run_dir):
            who = f"pid {stale.get('pid')} on host {stale.get('host')}" if stale else "unknown"
            print(f"{run_dir}: took over the stale claim of {who} ({info_path})", flush=True)
            return True
    lock.release()
    return False


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with suppress(OSError):
            os.utime(path)


@contextmanager
def claim(
    run_dir: Path, *, root: Path | None = None, wait_s: float | None = None
) -> Iterator[Claim]:
    """Hold the claim on ``run_dir`` for the ``with`` block; released on exit (an
    exception included) and, whatever ends the process, by the kernel.

    Args:
        run_dir: the run folder to be trained.
        root: the folder whose ``.claims/`` holds the claim files (``base.runs_dir``).
        wait_s: seconds to wait for another holder, printing who it is; ``None`` reads
            ``GLSIM_CLAIM_WAIT_S`` (default 0: refuse at once).

    Raises:
        RunClaimed: another live process holds the claim after ``wait_s``.
    """
    run_dir = Path(run_dir)
    lock_path, info_path = claim_paths(run_dir, root)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    wait = wait_seconds(wait_s)
    deadline = time.monotonic() + wait
    told = False
    while not _take(run_dir, lock, info_path):
        left = deadline - time.monotonic()
        if left <= 0:
            raise RunClaimed(describe(run_dir, info_path))
        if not told:
            print(f"{describe(run_dir, info_path)}; waiting up to {wait:g} s", flush=True)
            told = True
        time.sleep(min(POLL_S, left))
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(info_path, stop), daemon=True)
    beat.start()
    try:
        yield Claim(run_dir, lock_path, info_path)
    finally:
        stop.set()
        beat.join()
        info = _read_info(info_path)
        if info is not None and info.get("pid") == os.getpid() and info.get("host") == _host():
            with suppress(FileNotFoundError):
                info_path.unlink()
        lock.release()


@contextmanager
def claim_run(
    run_dir: Path,
    dist: Dist | None = None,
    *,
    root: Path | None = None,
    wait_s: float | None = None,
) -> Iterator[None]:
    """:func:`claim` for the processes of one run: under torchrun rank 0 claims and every
    rank learns the outcome from it, so all train or all refuse (a wait longer than the
    process group's timeout ends the ranks waiting for rank 0)."""
    with ExitStack() as held:
        refusal = None
        if dist is None or dist.is_main:
            try:
                held.enter_context(claim(run_dir, root=root, wait_s=wait_s))
            except RunClaimed as err:
                refusal = str(err)
        if dist is not None and dist.enabled:
            import torch.distributed as tdist

            outcome = [refusal]
            tdist.broadcast_object_list(outcome, src=0)  # rank 0's outcome, to every rank
            refusal = outcome[0]
        if refusal is not None:
            raise RunClaimed(refusal)
        yield
