"""The manifest: the one on-disk format every dataset is parsed into.

``manifest.csv`` has the columns ``path,label,split,class_name``: ``path`` relative to the
manifest's folder, ``label`` an int from 0, ``split`` ``train`` or ``test``. A dataset may add
extra columns (the built-in dataset adds the object box ``x0,y0,x1,y1`` in pixels).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from glsim.utils import atomic_write_text

REQUIRED_COLUMNS = ("path", "label", "split", "class_name")
SPLITS = ("train", "test")
BOX_COLUMNS = ("x0", "y0", "x1", "y1")


class ManifestError(ValueError):
    """A manifest is missing, malformed or inconsistent; the message names the file and rows."""


def _rows(df: pd.DataFrame, mask: pd.Series, limit: int = 5) -> str:
    bad = df[mask].head(limit)
    return "; ".join(f"row {i + 2}: {r.to_dict()}" for i, r in bad.iterrows())


def label_problem(labels: pd.Series, splits: pd.Series, names: list[str] | None = None) -> str | None:
    """What is wrong with integer ``labels`` (row numbers as in a CSV file with a header),
    or None: they must be 0..C-1 with no gap and every class must have a train row."""
    labels = labels.reset_index(drop=True)
    splits = splits.reset_index(drop=True)
    count = labels.nunique()
    outside = labels[(labels < 0) | (labels >= count)]
    if not outside.empty:
        # the classes are the labels 0, 1, ... present without a gap; the range shown is
        # theirs (4 classes and one 99 are 0..3, not the 0..4 of five distinct labels)
        present, classes = set(labels.tolist()), 0
        while classes in present:
            classes += 1
        row, value = int(outside.index[0]) + 2, int(outside.iloc[0])
        where = f"outside 0..{classes - 1}" if classes else "and no row has label 0"
        return (
            f"row {row} has label {value}, {where}: integer labels must be "
            f"0..C-1 with no gap ({count} distinct labels here); renumber the labels or use "
            "class names"
        )
    in_train = set(labels[splits == "train"].tolist())
    for label in range(count):
        if label not in in_train:
            rows = labels.index[labels == label]
            name = f" ({names[label]})" if names and label < len(names) else ""
            return (
                f"class {label}{name} has no train image (it appears only in the test split, "
                f"e.g. row {int(rows[0]) + 2}); every class needs at least one train image"
            )
    return None


def check_manifest(df: pd.DataFrame, source: str = "<manifest>") -> pd.DataFrame:
    """Check structure (columns, types, splits, label/class consistency); return a clean copy."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{source}: missing column(s) {missing}; a manifest needs {list(REQUIRED_COLUMNS)}"
        )
    if df.empty:
        raise ManifestError(f"{source}: has no rows")
    df = df.copy()
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = labels.isna() | (labels != labels.round()) | (labels < 0)
    if bad.any():
        raise ManifestError(f"{source}: label must be an integer >= 0; {_rows(df, bad)}")
    df["label"] = labels.astype("int64")
    df["path"] = df["path"].astype(str)
    df["class_name"] = df["class_name"].astype(str)
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        raise ManifestError(f"{source}: split must be one of {SPLITS}; {_rows(df, bad)}")
    per_label = df.groupby("label")["class_name"].nunique()
    if (per_label > 1).any():
        raise ManifestError(
            f"{source}: labels {per_label[per_label > 1].index.tolist()[:5]} map to several class names"
        )
    problem = label_problem(df["label"], df["split"])
    if problem:
        raise ManifestError(f"{source}: {problem}")
    return df


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and check ``manifest.csv``; errors name the file and the offending rows."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(
            f"manifest not found: {path}; prepare the dataset first (`glsim data prepare NAME`)"
        )
    try:
        df = pd.read_csv(path, dtype={"path": str, "split": str, "class_name": str})
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: not a readable CSV: {err}") from None
    return check_manifest(df, str(path))


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Check and atomically write a manifest (required columns first, then extras)."""
    df = check_manifest(df, str(path))
    cols = list(REQUIRED_COLUMNS) + [c for c in df.columns if c not in REQUIRED_COLUMNS]
    buf = io.StringIO()
    df[cols].to_csv(buf, index=False)
    return atomic_write_text(path, buf.getvalue())


def class_names(df: pd.DataFrame) -> list[str]:
    """Class names indexed by label."""
    pairs = df[["label", "class_name"]].drop_duplicates().sort_values("label")
    return pairs["class_name"].tolist()
