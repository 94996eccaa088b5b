"""The registered datasets, one module per family, and the helpers their parsers share.

Importing this package registers every entry (the registry imports it lazily).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from glsim.data.registry import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def find_dir(base: Path, *markers: str, max_depth: int = 3) -> Path:
    """The shallowest folder under ``base`` that contains every ``marker`` (file or folder).

    Archives differ in their top folder across releases and mirrors (``nabirds/`` or not);
    parsers look for the official files instead of assuming one.
    """
    if not base.is_dir():
        raise DatasetError(f"{base} does not exist; the archives were not extracted there")
    level = [base]
    for _ in range(max_depth + 1):
        for candidate in sorted(level):
            if all((candidate / m).exists() for m in markers):
                return candidate
        level = [d for f in level for d in f.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if not level:
            break
    raise DatasetError(
        f"could not find {', '.join(markers)} under {base} (searched {max_depth} levels); the "
        "archive does not have the official layout: check that the right file was downloaded"
    )


def relpath(path: Path, dataset_dir: Path) -> str:
    """``path`` relative to the manifest folder, with forward slashes."""
    return Path(os.path.relpath(path, dataset_dir)).as_posix()


def make_manifest(
    paths: Iterable[Path],
    labels: Iterable[int],
    splits: Iterable[str],
    class_names: Sequence[str],
    dataset_dir: Path,
    *,
    check_files: bool = True,
    missing_hint: str | None = None,
) -> pd.DataFrame:
    """Build the manifest frame; labels index ``class_names``; every file must exist.

    ``missing_hint`` replaces the default advice for missing files (an incomplete
    extraction), e.g. for a user's CSV, where the list itself is what to fix.
    """
    paths = list(paths)
    df = pd.DataFrame(
        {
            "path": [relpath(p, dataset_dir) for p in paths],
            "label": list(labels),
            "split": list(splits),
        }
    )
    if df.empty:
        raise DatasetError(f"no images found for the manifest in {dataset_dir}")
    if check_files:
        missing = [(i, p) for i, p in enumerate(paths) if not p.is_file()]
        if missing:
            row, first = missing[0]
            hint = missing_hint or (
                f"the extraction is incomplete: delete {dataset_dir / 'extracted'} and prepare again"
            )
            raise DatasetError(
                f"{len(missing)} image(s) listed are missing, e.g. {first}"
                f"{f' (row {row + 2})' if missing_hint else ''}; {hint}"
            )
    bad = ~df["label"].between(0, len(class_names) - 1)
    if bad.any():
        row = int(df.index[bad][0])
        raise DatasetError(
            f"{dataset_dir}: label {int(df['label'].iloc[row])} (row {row + 2}, {df['path'].iloc[row]}) "
            f"has no class name; valid labels are 0..{len(class_names) - 1}"
        )
    df["class_name"] = [class_names[i] for i in df["label"]]
    return df


def read_table(path: Path, names: list[str], sep: str = " ") -> pd.DataFrame:
    """Read an official whitespace/comma list file (no header) into named string columns."""
    if not path.is_file():
        raise DatasetError(f"official list file missing: {path}; the archive looks incomplete")
    return pd.read_csv(path, sep=sep, header=None, names=names, dtype=str, comment=None)


# Registering modules; imported last because they use the helpers above.
from glsim.data.datasets import (  # noqa: E402,F401
    anime,
    cub,
    dogs,
    flowers,
    folder,
    food,
    inat17,
    nabirds,
    pets,
    vegfru,
)
