"""Resumable HTTP download with retries, checksum verification and an atomic final rename.

A download writes ``NAME.part`` next to the target, resumes it with an HTTP ``Range`` request
after a dropped connection or an interrupted run, verifies the finished file against the
published checksum and only then renames it to ``NAME``. A file that fails verification is
kept aside as ``NAME.corrupt`` (never used, never silently deleted). Each verified file gets
a small ``NAME.verified.json`` stamp (size, mtime, sha256) so a complete file is neither
downloaded nor re-hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from glsim.progress import progress_enabled
from glsim.utils import atomic_write_json

CHUNK = 1 << 15  # small enough that a dropped connection loses little
USER_AGENT = "glsim-data/0.1 (+https://github.com/arkel23/GLSim)"


class DownloadError(RuntimeError):
    """A file could not be downloaded; the message names the URL, the file and what to do."""


class ChecksumError(DownloadError):
    """A file's checksum or size differs from the published one."""


@dataclass(frozen=True)
class Checksums:
    """What a finished file must match (any field may be None: not checked)."""

    sha256: str | None = None
    md5: str | None = None
    size: int | None = None


def file_digests(path: str | Path) -> dict[str, str]:
    """sha256 and md5 of a file, read once."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _stamp_matches(path: Path) -> dict | None:
    """The stored stamp of ``path`` if the file has not changed since it was verified."""
    stamp = _stamp_path(path)
    if not (path.is_file() and stamp.is_file()):
        return None
    try:
        data = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    st = path.stat()
    if data.get("size") == st.st_size and data.get("mtime_ns") == st.st_mtime_ns:
        return data
    return None


def _keep_aside(path: Path) -> Path:
    """Rename a bad file to ``NAME.corrupt`` (``NAME.corrupt.1``, ... if taken); return it.

    A file byte-identical to one already kept aside (the same bad mirror served again on a
    retry) is deleted instead, so retries do not pile up copies; that copy is returned.
    """
    size, digest = path.stat().st_size, None
    for kept in sorted(path.parent.glob(path.name + ".corrupt*")):
        if kept.is_file() and kept.stat().st_size == size:
            digest = digest or file_digests(path)["sha256"]
            if file_digests(kept)["sha256"] == digest:
                path.unlink()
                return kept
    target = path.with_name(path.name + ".corrupt")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt.{n}")
    os.replace(path, target)
    return target


def verify_file(path: str | Path, expected: Checksums, *, source: str = "") -> str:
    """Check ``path`` against ``expected``; record and return its sha256.

    A file that matches a previous verification stamp (same size and mtime) is not re-hashed.
    On mismatch the file is renamed to ``NAME.corrupt`` and :class:`ChecksumError` is raised.
    """
    path = Path(path)
    stamp = _stamp_matches(path)
    if stamp is not None and _stamp_satisfies(stamp, expected):
        return stamp["sha256"]
    size = path.stat().st_size
    problems = []
    if expected.size is not None and size != expected.size:
        problems.append(f"size {size} bytes, expected {expected.size}")
    got = file_digests(path) if not problems else {}
    for algo in ("sha256", "md5"):
        want = getattr(expected, algo)
        if want and got and got[algo] != want.lower():
            problems.append(f"{algo} {got[algo]}, expected {want.lower()}")
    if problems:
        aside = _keep_aside(path)
        _stamp_path(path).unlink(missing_ok=True)
        where = f" from {source}" if source else ""
        raise ChecksumError(
            f"{path.name}{where} failed verification: {'; '.join(problems)}. The file was kept "
            f"aside as {aside} and not used. Download it again (delete {aside} when done), or "
            "if the publisher changed the file, set the new checksum in a registry overrides "
            "file (GLSIM_REGISTRY_OVERRIDES)."
        )
    st = path.stat()
    atomic_write_json(
        _stamp_path(path),
        {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **got},
    )
    return got["sha256"]


def _stamp_satisfies(stamp: dict, expected: Checksums) -> bool:
    for algo in ("sha256", "md5"):
        want = getattr(expected, algo)
        if want and stamp.get(algo) != want.lower():
            return False
    return expected.size is None or stamp.get("size") == expected.size


def is_verified(path: str | Path, expected: Checksums) -> bool:
    """True when ``path`` exists and its verification stamp matches ``expected`` (no hashing)."""
    stamp = _stamp_matches(Path(path))
    return stamp is not None and _stamp_satisfies(stamp, expected)


def _total_size(response: requests.Response, offset: int) -> int | None:
    """Full size of the remote file from Content-Range or Content-Length."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return int(length) + offset if length is not None else None


def _fetch_once(url: str, part: Path, *, timeout: float, progress: bool, desc: str) -> None:
    """One attempt: continue ``part`` from its current size; raise on any transfer error."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and offset:
            # The range starts at or past the end: the part may already be complete; the
            # caller's checksum decides. Nothing more to fetch.
            return
        if response.status_code >= 500:
            raise requests.HTTPError(f"server error {response.status_code}", response=response)
        if response.status_code >= 400:
            raise DownloadError(
                f"{url} answered HTTP {response.status_code}; check the URL, or set a mirror "
                "in a registry overrides file (GLSIM_REGISTRY_OVERRIDES)"
            )
        if offset and response.status_code != 206:
            offset = 0  # the server ignored Range: start over
        total = _total_size(response, offset)
        mode = "ab" if offset else "wb"
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            for block in response.iter_content(CHUNK):
                f.write(block)
                bar.update(len(block))
        written = part.stat().st_size
        if total is not None and written < total:
            raise requests.exceptions.ChunkedEncodingError(
                f"connection closed after {written} of {total} bytes"
            )


def download_file(
    url: str,
    dest: str | Path,
    expected: Checksums = Checksums(),
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool | None = None,
) -> Path:
    """Download ``url`` to ``dest`` with resume, retries and verification.

    Args:
        url: http(s) URL.
        dest: final path; ``dest.part`` holds the partial download meanwhile.
        expected: published checksums/size (None fields are not checked; the sha256 of
            what was received is always recorded in ``dest.verified.json``).
        retries: attempts after the first failure; each resumes where the last stopped.
        backoff: seconds before the first retry, doubled each time.
        timeout: seconds to wait for the server to answer or send the next bytes.
        progress: show a tqdm bar (default: :func:`glsim.progress.progress_enabled`).

    Returns:
        ``dest``, verified.

    Raises:
        ChecksumError: the finished file does not match (it is kept as ``dest.corrupt``).
        DownloadError: the server refused or every retry failed (the ``.part`` is kept so
            the next run resumes).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        verify_file(dest, expected, source=url)
        return dest
    part = dest.with_name(dest.name + ".part")
    show_progress = progress_enabled() if progress is None else progress
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout=timeout, progress=show_progress, desc=dest.name)
            break
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.HTTPError,
            requests.exceptions.ChunkedEncodingError,  # a body cut short
        ) as err:
            last_error = err
            if attempt < retries:
                time.sleep(backoff * 2**attempt)
    else:
        have = part.stat().st_size if part.exists() else 0
        raise DownloadError(
            f"could not download {url} after {retries + 1} attempts ({last_error}); "
            f"{have} bytes are kept in {part} and the next run resumes from there"
        )
    os.replace(part, dest)
    verify_file(dest, expected, source=url)
    return dest
