"""The `prepare` and `shard` stages as one library call each: the dataset into a manifest,
then the manifest into the final shards and the LR search's shards, where
:mod:`glsim.runs` says. Called through :mod:`glsim.protocol.data`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from glsim import runs
from glsim.config import Params


def prepare(params: Params) -> Path:
    """Download/verify/extract/parse (or generate) the dataset; returns its manifest."""
    from glsim.data.registry import prepare_dataset

    d = params.data
    return prepare_dataset(d.dataset_source, d.raw_dir, name=d.dataset, params=params, force=True)


def shard_workers() -> int:
    """Processes writing shards: one per core, at most 4 (and at least 1)."""
    return max(1, min(4, os.cpu_count() or 1))


def shard(params: Params) -> dict[str, dict[str, Any]]:
    """Manifest -> size-bounded shards, class map and count index (``final``), and the LR
    search's train/val split (``lrsearch``, its val part as the ``test`` split); returns
    both shard indices."""
    from glsim.data.lrsearch import write_lr_search_shards
    from glsim.data.registry import get_dataset
    from glsim.data.shards import write_shards

    d = params.data
    manifest = runs.manifest_path(params)
    limits = dict(max_count=d.shard_max_count, max_bytes=d.shard_max_bytes, workers=shard_workers())
    final = write_shards(manifest, runs.shards_dir(params), **limits)
    search = write_lr_search_shards(
        manifest, runs.shards_dir(params, "lrsearch"), seed=params.protocol.search_seed,
        fraction=params.protocol.search_train_fraction, large=get_dataset(d.dataset_source).large,
        **limits,
    )  # fmt: skip
    return {"final": final, "lrsearch": search}
