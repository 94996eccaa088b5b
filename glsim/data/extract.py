"""Safe extraction of tar and zip archives.

Every member is checked before anything is written: a member whose path is absolute, climbs
out with ``..``, or is a link pointing outside the target folder is refused, and the error
names it. Extraction goes to a hidden staging folder first and is moved into place only when
complete, with a ``.done-ARCHIVE`` marker, so an interrupted run never leaves a half-extracted
tree that looks finished.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from glsim.progress import progress
from glsim.utils import atomic_write_text


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder."""


def is_archive(path: str | Path) -> bool:
    name = Path(path).name.lower()
    return name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip"))


def _check_name(archive: Path, name: str) -> None:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(
            f"{archive.name}: member {name!r} has an absolute path; refusing to extract this "
            "archive (it may be corrupt or malicious; download it again from the official source)"
        )
    if ".." in posix.parts:
        raise UnsafeArchiveError(
            f"{archive.name}: member {name!r} escapes the target folder with '..'; refusing to "
            "extract this archive (it may be corrupt or malicious)"
        )


def _inside(root: Path, target: Path) -> bool:
    root = os.path.realpath(root)
    target = os.path.realpath(target)
    return target == root or target.startswith(root + os.sep)


def check_tar_members(archive: Path, members: list[tarfile.TarInfo], dest: Path) -> None:
    """Refuse absolute paths, ``..``, links leaving ``dest`` and device files."""
    for m in members:
        _check_name(archive, m.name)
        if m.issym() or m.islnk():
            base = dest if m.islnk() else (dest / m.name).parent
            if os.path.isabs(m.linkname) or not _inside(dest, base / m.linkname):
                kind = "symlink" if m.issym() else "hard link"
                raise UnsafeArchiveError(
                    f"{archive.name}: member {m.name!r} is a {kind} to {m.linkname!r}, outside "
                    "the target folder; refusing to extract this archive"
                )
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(
                f"{archive.name}: member {m.name!r} is a device or fifo; refusing to extract"
            )


def _extract_tar(archive: Path, staging: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        check_tar_members(archive, members, staging)
        # The 'data' filter is a second line of defence (also drops setuid bits etc.).
        bar = progress(members, total=len(members), desc=f"extract {archive.name}", unit="file")
        tar.extractall(staging, members=bar, filter="data")


def _extract_zip(archive: Path, staging: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(archive, info.filename)
            if not _inside(staging, staging / info.filename):
                raise UnsafeArchiveError(
                    f"{archive.name}: member {info.filename!r} escapes the target folder"
                )
        zf.extractall(staging, members=progress(infos, desc=f"extract {archive.name}", unit="file"))


def _marker(dest: Path, archive: Path) -> Path:
    return dest / f".done-{archive.name}"


def is_extracted(archive: str | Path, dest: str | Path) -> bool:
    return _marker(Path(dest), Path(archive)).is_file()


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract ``archive`` (tar, tar.gz/bz2/xz, tgz or zip) safely into ``dest``.

    Top-level entries are moved from a staging folder into ``dest`` once every member has
    been written; an already-extracted archive (marker present) is skipped.

    Raises:
        UnsafeArchiveError: a member would land outside ``dest`` (nothing is moved into place).
        ValueError: ``archive`` is not a known archive type.
    """
    archive, dest = Path(archive), Path(dest)
    if is_extracted(archive, dest):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".partial-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)  # left over from an interrupted run
    staging.mkdir()
    try:
        name = archive.name.lower()
        if name.endswith(".zip"):
            _extract_zip(archive, staging)
        elif is_archive(archive):
            _extract_tar(archive, staging)
        else:
            raise ValueError(f"{archive}: not a tar or zip archive (by its name)")
        _merge_dirs(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_text(_marker(dest, archive), f"{archive.name}\n")
    return dest


def _merge_dirs(src: Path, dst: Path) -> None:
    """Move the contents of ``src`` into the existing ``dst`` (two archives sharing a folder)."""
    for entry in src.iterdir():
        target = dst / entry.name
        if target.is_dir() and entry.is_dir():
            _merge_dirs(entry, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
