"""The LR-search split of a train set (paper Sec. 4): per class, train 80% / val 20%, or
20% / 80% for large datasets (over 50,000 train images: DAFB, Food, iNat17), unless
``protocol.search_train_fraction`` names the share."""

from __future__ import annotations

import numpy as np
import pandas as pd

LARGE_TRAIN_IMAGES = 50_000


def lr_search_fraction(large: bool) -> float:
    """Share of each class kept for training during the LR search (App. C)."""
    return 0.2 if large else 0.8


def search_train_fraction(configured: float | None, *, large: bool, train_images: int) -> float:
    """The LR search's train share: ``configured`` (``protocol.search_train_fraction``) when
    set, else App. C's rule (0.2 for a registered large dataset or one of more than
    :data:`LARGE_TRAIN_IMAGES` train images, else 0.8)."""
    if configured is not None:
        return configured
    return lr_search_fraction(large or train_images > LARGE_TRAIN_IMAGES)


def lr_search_split(df: pd.DataFrame, *, seed: int, fraction: float) -> pd.DataFrame:
    """Split the ``train`` rows of a manifest into ``train`` and ``val``, per class.

    Each class keeps ``int(n * fraction)`` images for training (at least one, and at least
    one for val, when it has two or more; a class of one image is train only), the rest go
    to val. The choice depends only on
    the seed and the set of paths, not on row order.

    Args:
        df: a manifest (test rows are dropped).
        seed: the search seed.
        fraction: share of each class kept for training (:func:`search_train_fraction`).

    Returns:
        The train rows with ``split`` set to ``train`` or ``val``, sorted by label then path.
    """
    if "split" not in df.columns or "label" not in df.columns or "path" not in df.columns:
        raise ValueError(
            f"lr_search_split needs a manifest with path,label,split; got {list(df.columns)}"
        )
    train = df[df["split"] == "train"].sort_values(["label", "path"]).reset_index(drop=True)
    if train.empty:
        raise ValueError("the manifest has no 'train' rows to split for the LR search")
    split = np.empty(len(train), dtype=object)
    for label, index in train.groupby("label").indices.items():
        n = len(index)
        n_train = int(n * fraction)
        # Keep every class in both parts when it can be; a single image goes to train.
        n_train = min(max(n_train, 1), n - 1) if n >= 2 else n
        order = np.random.default_rng([seed, int(label)]).permutation(n)
        split[index[order[:n_train]]] = "train"
        split[index[order[n_train:]]] = "val"
    return train.assign(split=split)
