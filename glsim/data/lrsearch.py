"""Shards for the LR search (App. C): the train split re-split per class into train / val.

The val part is written as the ``test`` split of its own shard folder, so every loader,
evaluation and report works on it unchanged; its manifest lives beside the shards with
paths relative to that folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from glsim.data.manifest import read_manifest, write_manifest
from glsim.data.shards import write_shards
from glsim.data.splits import lr_search_split, search_train_fraction
from glsim.runs import LR_SEARCH_DIR  # noqa: F401  (re-exported: where the split's shards go)


def write_lr_search_shards(
    manifest_path: str | Path,
    out_dir: str | Path,
    *,
    seed: int,
    fraction: float | None = None,
    large: bool = False,
    max_count: int,
    max_bytes: int,
    workers: int = 1,
) -> dict[str, Any]:
    """Split ``manifest_path``'s train rows per class, ``fraction`` of each class to train
    (None: App. C's 80/20, or 20/80 if ``large`` or over 50,000 train images), and shard them."""
    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    manifest = read_manifest(manifest_path)
    fraction = search_train_fraction(
        fraction, large=large, train_images=int((manifest["split"] == "train").sum())
    )
    df = lr_search_split(manifest, seed=seed, fraction=fraction)
    df["split"] = df["split"].map({"train": "train", "val": "test"})
    rel = os.path.relpath(manifest_path.parent.resolve(), out_dir.resolve())
    df["path"] = [os.path.normpath(os.path.join(rel, p)) for p in df["path"]]
    derived = write_manifest(df, out_dir / "manifest.csv")
    return write_shards(derived, out_dir, max_count=max_count, max_bytes=max_bytes, workers=workers)
