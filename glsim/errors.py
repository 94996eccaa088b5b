"""The errors that mean "bad input" (a message for the user, not a traceback), and the one
guard every entry point (stage scripts, the ``glsim`` command) runs its work under.

A user error exits with status 2 and one line ``error: <message>`` naming the file, key or
value and what to do; ``--debug`` or ``GLSIM_DEBUG=1`` shows the traceback instead. A
disk-full or permission error, or a folder that cannot be made, names the path. Anything
else is a bug and keeps its traceback.

Whoever starts the process (a flow starting torchrun, ``glsim torchrun``) learns what it
stopped on from a structured record, not from its stderr: with ``GLSIM_ERROR_RECORD`` set
to a file, :func:`guarded` also appends one JSON line there per error it reports,

    {"rank": 1, "error": "TrainingDiverged", "message": "...", "errno": null,
     "strerror": null, "filename": null, "filename2": null}

(``rank``: torchrun's ``RANK``, 0 without it; ``error``: the most specific class of
:func:`user_errors` the error is, or the ``OSError`` subclass of a described disk or
permission error, with its ``errno`` fields), and :func:`read_error_records` /
:func:`error_of` read it back as the same exception.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable

DEBUG_ENV = "GLSIM_DEBUG"
ERROR_RECORD_ENV = "GLSIM_ERROR_RECORD"  # a file guarded() appends one JSON line to per error

_OS_ADVICE = {
    errno.ENOSPC: "free disk space there (or point data.raw_dir, data.shards_dir or "
    "base.runs_dir at another disk) and run again: finished work is kept and runs resume",
    errno.EDQUOT: "your disk quota is used up; free space and run again (runs resume)",
    errno.EACCES: "you may not write or read there: fix its permissions or use another folder",
    errno.EPERM: "the operation is not permitted there: fix its permissions or use another folder",
    errno.EROFS: "that file system is read-only: point the params at a writable folder",
}


class TrackingUnavailable(RuntimeError):
    """The tracking store does not answer; the message is one line saying what to do."""


class RegistryError(RuntimeError):
    """A registry command cannot proceed; the message names what is missing and what to do."""


class SyncError(RuntimeError):
    """A pending tracking file cannot be replayed; the message names it and what to do."""


class RunError(RuntimeError):
    """A run folder is missing what a step needs (no checkpoint, unfinished training)."""


class CommandError(ValueError):
    """A ``glsim`` command's argument is unusable (no images, an unknown model, a bad size)."""


class ExportMismatch(RuntimeError):
    """An exported model's outputs differ from PyTorch's beyond the tolerance."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every error class whose message names the bad file/key/value and what to do."""
    from glsim.config import ParamsError
    from glsim.data.download import DownloadError
    from glsim.data.extract import UnsafeArchiveError
    from glsim.data.manifest import ManifestError
    from glsim.data.registry import DatasetError
    from glsim.data.shards import ShardError
    from glsim.models.backbone import WeightsError
    from glsim.models.registry import UnknownModel
    from glsim.train.claim import RunClaimed
    from glsim.train.loop import TrainingDiverged

    errors: list[type[BaseException]] = [
        ParamsError,
        ManifestError,
        DatasetError,
        DownloadError,
        UnsafeArchiveError,
        ShardError,
        WeightsError,
        UnknownModel,
        RunError,
        RunClaimed,
        CommandError,
        ExportMismatch,
        TrainingDiverged,
        TrackingUnavailable,
        RegistryError,
        SyncError,
    ]
    try:
        from glsim.validation import ValidationFailed

        errors.append(ValidationFailed)
    except ImportError:  # pragma: no cover - validation extras missing
        pass
    return tuple(errors)


def retriable_errors() -> tuple[type[BaseException], ...]:
    """The user errors a retry may get past: a download or a tracking server that may
    answer next time, and a run folder another trainer holds (once it has finished, the
    retry skips the run). Every other user error (a diverged run among them) is final."""
    from glsim.data.download import DownloadError
    from glsim.train.claim import RunClaimed

    return (DownloadError, TrackingUnavailable, RunClaimed)


def debug_requested(argv: list[str] | None = None) -> bool:
    """``--debug`` on the command line or ``GLSIM_DEBUG`` set to a true value."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return "--debug" in argv or env not in ("", "0", "false", "no")


_MKDIR_ADVICE = (
    "that folder cannot be made there: point the params (base.runs_dir, base.reports_dir, "
    "data.raw_dir, data.shards_dir) or the option at a folder on a writable disk"
)


def _failed_in_mkdir(err: OSError) -> bool:
    """Whether ``err`` was raised making a folder (``Path.mkdir``, ``os.makedirs``), where a
    missing or non-folder parent is the user's path, not a bug."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and frames[-1].name in ("mkdir", "makedirs")


def describe_os_error(err: OSError) -> str | None:
    """One line for a disk-full or permission error, or a folder that cannot be made,
    naming the path; None for other errors."""
    advice = _OS_ADVICE.get(err.errno or -1)
    if advice is None and err.errno in (errno.ENOENT, errno.ENOTDIR) and _failed_in_mkdir(err):
        advice = _MKDIR_ADVICE
    if advice is None:
        return None
    where = err.filename or "(path not reported)"
    if err.filename2:
        where = f"{where} -> {err.filename2}"
    return f"{where}: {err.strerror or os.strerror(err.errno or 0)}; {advice}"


def _unwrap_worker(message: str) -> str:
    """The error's own message when a DataLoader worker raised it: torch re-raises it in
    the main process as "Caught X in DataLoader worker process 0.\nOriginal Traceback ...",
    whose last line is ``module.X: <message>``."""
    if not (message.startswith("Caught ") and "\nOriginal Traceback" in message):
        return message
    last = message.splitlines()[-1]
    return last.partition(": ")[2] or last


def guarded(main: Callable[[], int | None], *, debug: bool | None = None) -> int:
    """Run ``main``; a user error becomes one ``error:`` line on stderr and exit status 2."""
    debug = debug_requested() if debug is None else debug
    if debug:
        return int(main() or 0)
    try:
        return int(main() or 0)
    except user_errors() as err:
        message = _unwrap_worker(str(err).strip()) or type(err).__name__
        _record_error(err, message)
    except OSError as err:
        message = describe_os_error(err)
        if message is None:
            raise
        _record_error(err, message)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print(f"error: {message}", file=sys.stderr)
    _tell_torchrun(f"error: {message}")
    return 2


_OS_FIELDS = ("errno", "strerror", "filename", "filename2")


def _record_error(err: BaseException, message: str) -> None:
    """Append ``err`` as one JSON line to the file ``GLSIM_ERROR_RECORD`` names (nothing
    when unset): one ``write`` of one line to a file opened for appending, so the lines of
    several ranks never interleave."""
    path = os.environ.get(ERROR_RECORD_ENV)
    if not path:
        return
    import json

    if isinstance(err, OSError):
        name = type(err).__name__
        fields = {k: getattr(err, k) for k in _OS_FIELDS}
    else:
        known = user_errors()
        name = next(c.__name__ for c in type(err).__mro__ if c in known)
        fields = dict.fromkeys(_OS_FIELDS)
    rank = int(os.environ.get("RANK", "0"))
    line = json.dumps({"rank": rank, "error": name, "message": message, **fields}, default=str)
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass  # the line is on stderr; whoever reads the record sees a bare exit status


def read_error_records(path: str | os.PathLike) -> list[dict]:
    """The records :func:`guarded` appended to ``path`` (see the module docstring), in the
    order they were written; none when the file is missing."""
    import json

    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def error_of(record: dict) -> BaseException:
    """The exception a record names, to raise in the process that read it: the user error
    of that class with the rank's message, or the ``OSError`` with the rank's fields (an
    error class that takes no message becomes a :class:`RunError` naming it)."""
    name, message = record["error"], record["message"]
    if record.get("errno") is not None:
        return OSError(
            record["errno"], record["strerror"], record["filename"], None, record["filename2"]
        )
    by_name = {cls.__name__: cls for cls in user_errors()}
    try:
        return by_name[name](message)
    except (KeyError, TypeError):
        return RunError(f"{name}: {message}")


def _tell_torchrun(line: str) -> None:
    """Under torchrun, leave the ``error:`` line in the rank's error file, which the
    launcher's failure summary (``ChildFailedError``, "Root Cause") shows as the cause in
    place of "To enable traceback see ..."; the rank still exits with status 2."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    import json
    import time

    try:
        with open(path, "w") as f:
            json.dump({"message": line, "timestamp": int(time.time())}, f)
    except OSError:
        pass  # the summary then says less; the line is on stderr already
