"""A user's own dataset through the same stages: ``imagefolder:PATH`` or ``csv:PATH``.

``imagefolder:PATH`` reads ``PATH/<split>/<class>/*.jpg`` with split ``train`` and ``test``;
``csv:PATH`` reads a CSV with columns ``path,label,split`` (paths relative to the CSV's folder
or absolute; ``label`` an int from 0 or a class name; an optional ``class_name`` column).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from glsim.data.datasets import IMAGE_SUFFIXES, make_manifest
from glsim.data.registry import DatasetError, register_dataset

SPLITS = ("train", "test")


@register_dataset(
    "imagefolder",
    description="your images as PATH/<train|test>/<class>/*.jpg (use imagefolder:PATH)",
    parametric=True,
)
def parse_imagefolder(dataset_dir: Path, *, source: Path) -> pd.DataFrame:
    source = source.expanduser().resolve()
    missing = [s for s in SPLITS if not (source / s).is_dir()]
    if missing:
        raise DatasetError(
            f"imagefolder:{source}: missing split folder(s) {missing}; expected "
            f"{source}/train/<class>/*.jpg and {source}/test/<class>/*.jpg"
        )
    classes = sorted({d.name for s in SPLITS for d in (source / s).iterdir() if d.is_dir()})
    label_of = {c: i for i, c in enumerate(classes)}
    paths, labels, splits = [], [], []
    for split in SPLITS:
        for class_dir in sorted(d for d in (source / split).iterdir() if d.is_dir()):
            for image in sorted(class_dir.iterdir()):
                if image.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(image)
                    labels.append(label_of[class_dir.name])
                    splits.append(split)
    return make_manifest(paths, labels, splits, classes, dataset_dir)


@register_dataset(
    "csv",
    description="your images listed in a CSV of path,label,split (use csv:FILE)",
    parametric=True,
)
def parse_csv(dataset_dir: Path, *, source: Path) -> pd.DataFrame:
    source = source.expanduser().resolve()
    if not source.is_file():
        raise DatasetError(f"csv:{source}: file not found")
    table = pd.read_csv(source, dtype=str).rename(columns=str.strip)
    missing = [c for c in ("path", "label", "split") if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{source}: missing column(s) {missing}; need path,label,split (got {list(table.columns)})"
        )
    bad = ~table["split"].isin(SPLITS)
    if bad.any():
        row = int(table.index[bad][0]) + 2
        raise DatasetError(
            f"{source}: row {row} has split {table['split'][bad].iloc[0]!r}; use 'train' or 'test'"
        )
    if table["label"].str.fullmatch(r"\d+").all():
        labels = table["label"].astype(int)
        if "class_name" in table.columns:
            pairs = dict(zip(labels, table["class_name"], strict=True))
        else:
            pairs = {}
        classes = [pairs.get(i, str(i)) for i in range(int(labels.max()) + 1)]
    else:
        classes = sorted(table["label"].unique())
        labels = table["label"].map({c: i for i, c in enumerate(classes)})
    paths = [p if p.is_absolute() else source.parent / p for p in map(Path, table["path"])]
    return make_manifest(paths, labels, table["split"], classes, dataset_dir)
