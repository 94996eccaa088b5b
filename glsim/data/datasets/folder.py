"""A user's own dataset through the same stages: ``imagefolder:PATH`` or ``csv:FILE``.

``imagefolder:PATH`` reads ``PATH/<split>/<class>/*.jpg`` with split ``train`` and ``test``;
every class needs a non-empty ``train/<class>`` folder. ``csv:FILE`` reads a CSV with
columns ``path,label,split`` (paths relative to the CSV's folder or absolute; ``label``
either integers 0..C-1 with no gap, or class names; an optional ``class_name`` column names
integer labels). Labels are checked where they are read: an error names the file, the row
(as a spreadsheet shows it: the header is row 1), the value and the valid range.

Every image must lie under the dataset's root (the image folder; the CSV's folder) after
following symlinks, or under a folder of ``data.datasets.<name>.allowed_roots``, and must
be an image PIL can read: a row ``../../etc/passwd`` or a link to a file elsewhere is
refused before anything is written, so no other file can reach the shards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from PIL import Image

from glsim.data.datasets import IMAGE_SUFFIXES, make_manifest
from glsim.data.manifest import label_problem
from glsim.data.registry import DatasetError, register_dataset

SPLITS = ("train", "test")
INTEGER = r"[+-]?\d+"


def _check_images(
    paths: Sequence[Path],
    roots: Sequence[Path],
    *,
    where: str,
    row: Callable[[int], str] | None = None,
) -> None:
    """Every image lies under one of ``roots`` (resolved) once symlinks are followed, and is
    an image. ``row(i)``, when given, says where the i-th path was listed (``row 5``)."""
    shown = " or ".join(str(r) for r in roots)
    fix = (
        f"move it under {shown}, or list its folder in data.datasets.<name>.allowed_roots "
        "(glsim data prepare --allowed-root DIR)"
    )
    listed = (lambda i: f" ({row(i)})") if row else (lambda i: "")
    for i, path in enumerate(paths):
        target = path.resolve()
        if not any(target.is_relative_to(root) for root in roots):
            how = f"is a symlink to {target}" if path.is_symlink() else f"resolves to {target}"
            raise DatasetError(f"{where}: image {path}{listed(i)} {how}, outside {shown}; {fix}")
    for i, path in enumerate(paths):
        try:  # the header and the file's structure only: no pixel decoding
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds for a broken file
            from glsim.data.loader import image_problem

            raise DatasetError(
                f"{where}: {path}{listed(i)} is not a readable image ({image_problem(err)}); "
                "replace or remove it"
            ) from None


def _roots(own: Path, allowed: Sequence[Path]) -> list[Path]:
    return [r.expanduser().resolve() for r in (own, *allowed)]


def _with_roots(manifest: pd.DataFrame, roots: list[Path]) -> pd.DataFrame:
    """The manifest with its roots attached, for the registry to record next to it (the
    shard stage checks every image against them again)."""
    manifest.attrs["roots"] = [str(r) for r in roots]
    return manifest


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@register_dataset(
    "imagefolder",
    description="your images as PATH/<train|test>/<class>/*.jpg (source imagefolder:PATH)",
    parametric=True,
)
def parse_imagefolder(
    dataset_dir: Path, *, source: Path, allowed_roots: Sequence[Path] = ()
) -> pd.DataFrame:
    source = source.expanduser().resolve()
    where = f"imagefolder:{source}"
    missing = [s for s in SPLITS if not (source / s).is_dir()]
    if missing:
        raise DatasetError(
            f"{where}: missing split folder(s) {missing}; expected "
            f"{source}/train/<class>/*.jpg and {source}/test/<class>/*.jpg"
        )
    class_dirs = {s: sorted(d for d in (source / s).iterdir() if d.is_dir()) for s in SPLITS}
    images = {(s, d.name): _images(d) for s in SPLITS for d in class_dirs[s]}
    if not class_dirs["train"]:
        raise DatasetError(f"{where}: {source / 'train'} has no class folders")
    for d in class_dirs["train"]:
        if not images["train", d.name]:
            raise DatasetError(
                f"{where}: class folder {d} has no images ({', '.join(IMAGE_SUFFIXES)}); "
                "add its training images or remove the folder"
            )
    classes = [d.name for d in class_dirs["train"]]
    for d in class_dirs["test"]:
        if d.name not in classes:
            raise DatasetError(
                f"{where}: test class folder {d} has no training folder {source / 'train' / d.name}; "
                "every class needs training images (or remove it from test)"
            )
    label_of = {c: i for i, c in enumerate(classes)}
    paths, labels, splits = [], [], []
    for split in SPLITS:
        for class_dir in class_dirs[split]:
            for image in images[split, class_dir.name]:
                paths.append(image)
                labels.append(label_of[class_dir.name])
                splits.append(split)
    roots = _roots(source, allowed_roots)
    _check_images(paths, roots, where=where)
    return _with_roots(make_manifest(paths, labels, splits, classes, dataset_dir), roots)


def _csv_labels(table: pd.DataFrame, source: Path) -> tuple[pd.Series, list[str]]:
    """Integer labels and class names from the ``label`` (and ``class_name``) columns."""
    raw = table["label"].str.strip()
    empty = raw.isna() | (raw == "")
    if empty.any():
        raise DatasetError(f"{source}: row {int(table.index[empty][0]) + 2} has no label")
    if raw.str.fullmatch(INTEGER).all():
        labels = raw.astype(int)
        names = None
        if "class_name" in table.columns:
            pairs = (
                table.assign(label=labels)
                .groupby("label")["class_name"]
                .agg(lambda v: sorted(set(v.dropna())))
            )
            clash = pairs[pairs.map(len) > 1]
            if not clash.empty:
                raise DatasetError(
                    f"{source}: label {clash.index[0]} has several class names {clash.iloc[0][:3]}; "
                    "give each label one class_name"
                )
            names = {int(k): (v[0] if v else str(k)) for k, v in pairs.items()}
        problem = label_problem(labels, table["split"])
        if problem:
            raise DatasetError(f"{source}: {problem}")
        count = labels.nunique()
        classes = [names.get(i, str(i)) if names else str(i) for i in range(count)]
        return labels, classes
    numeric = raw.str.fullmatch(INTEGER)
    if numeric.any() and numeric.mean() > 0.5:  # mostly integers: a typo, not class names
        row = int(table.index[~numeric][0]) + 2
        raise DatasetError(
            f"{source}: row {row} has label {raw[~numeric].iloc[0]!r} among integer labels; "
            "use integers 0..C-1 throughout or class names throughout"
        )
    classes = sorted(raw.unique())
    in_train = set(raw[table["split"] == "train"])
    for name in classes:
        if name not in in_train:
            row = int(table.index[raw == name][0]) + 2
            raise DatasetError(
                f"{source}: class {name!r} has no train image (only in test, e.g. row {row}); "
                "every class needs at least one train image"
            )
    return raw.map({c: i for i, c in enumerate(classes)}), classes


@register_dataset(
    "csv",
    description="your images listed in a CSV of path,label,split (source csv:FILE)",
    parametric=True,
)
def parse_csv(
    dataset_dir: Path, *, source: Path, allowed_roots: Sequence[Path] = ()
) -> pd.DataFrame:
    source = source.expanduser().resolve()
    if not source.is_file():
        raise DatasetError(f"csv:{source}: file not found")
    try:
        table = pd.read_csv(source, dtype=str, skipinitialspace=True).rename(columns=str.strip)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetError(f"{source}: not a readable CSV ({err})") from None
    missing = [c for c in ("path", "label", "split") if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{source}: missing column(s) {missing}; need path,label,split (got {list(table.columns)})"
        )
    table["split"] = table["split"].str.strip()
    bad = ~table["split"].isin(SPLITS)
    if bad.any():
        row = int(table.index[bad][0]) + 2
        raise DatasetError(
            f"{source}: row {row} has split {table['split'][bad].iloc[0]!r}; use 'train' or 'test'"
        )
    labels, classes = _csv_labels(table, source)
    paths = [
        p if p.is_absolute() else source.parent / p for p in map(Path, table["path"].str.strip())
    ]
    manifest = make_manifest(
        paths, labels, table["split"], classes, dataset_dir,
        missing_hint=f"fix that path in {source} (paths are relative to the CSV's folder)",
    )  # fmt: skip
    roots = _roots(source.parent, allowed_roots)
    _check_images(paths, roots, where=str(source), row=lambda i: f"row {i + 2}")
    return _with_roots(manifest, roots)
