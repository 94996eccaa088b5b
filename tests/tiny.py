"""Tiny settings shared by the tests: a ViT of depth 2 / width 64 at 32x32, and params for a
whole pipeline run in ``tmp_path`` in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from glsim.config import Params
from glsim.data.manifest import write_manifest

TINY_VIT = {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}


def tiny_params(tmp_path, **sections) -> Params:
    """Params for a whole pipeline run in ``tmp_path`` in seconds on a CPU."""
    base = {
        "base": {
            "reports_dir": str(tmp_path / "reports"), "runs_dir": str(tmp_path / "runs"), "device": "cpu",
            "num_threads": 1,  # tiny models: ~10x faster on one thread than on two on a busy box
        },
        "data": {
            "raw_dir": str(tmp_path / "data/raw"),
            "shards_dir": str(tmp_path / "data/shards"),
            "image_size": 32,
            "synthetic": {
                "num_classes": 3, "train_per_class": 6, "test_per_class": 3,
                "canvas_size": 43, "object_size": [8, 12], "distractors": [1, 2],
            },
        },
        "model": {"backbone": {"name": "vit_tiny_patch16_224", "overrides": dict(TINY_VIT), "weights": None}},
        "pretrain": {
            "num_classes": 4, "images_per_epoch": 32, "epochs": 1, "batch_size": 16,
            "warmup_steps": 1, "test_images": 32, "output": str(tmp_path / "models/backbone.safetensors"),
        },
        "train": {"epochs": 2, "batch_size": 6, "warmup_steps": 1},
        "protocol": {"models": ["vit", "glsim"], "seeds": [1], "lr_grid": [0.03, 0.01], "search_epochs": 1},
        "ablations": {
            "variants": {"glsim_no_aggregator": {"model": "glsim", "set": {"model.glsim.aggregator": False}}},
            "tables": {
                "table5": {
                    "title": "Table 5",
                    "columns": ["top-1"],
                    "rows": {"ViT": ["vit"], "no aggregator": ["glsim_no_aggregator"], "GLSim": ["glsim"]},
                }
            },
        },
        "eval": {"batch_size": 8},
    }  # fmt: skip
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return Params.model_validate(base)


def write_image_dataset(
    root: Path,
    *,
    classes: int = 3,
    train: int = 4,
    test: int = 2,
    side: int = 24,
    name: str = "{i:03d}.png",
) -> Path:
    """``classes * (train + test)`` random PNGs plus a manifest with a box; returns the manifest."""
    rng = np.random.default_rng(0)
    rows = []
    for label in range(classes):
        for i in range(train + test):
            path = f"images/class_{label}/" + name.format(i=i)
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / path)
            split = "train" if i < train else "test"
            rows.append(
                dict(
                    path=path,
                    label=label,
                    split=split,
                    class_name=f"c{label}",
                    x0=2,
                    y0=3,
                    x1=20,
                    y1=21,
                )
            )
    return write_manifest(pd.DataFrame(rows), root / "manifest.csv")


def _png(path: Path, rng: np.random.Generator, side: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)


def write_imagefolder(
    root: Path, *, classes: int, train: int = 2, test: int = 1, side: int = 24
) -> Path:
    """A user's ``root/<train|test>/<class>/*.png`` folder with ``classes`` classes."""
    rng = np.random.default_rng(classes)
    for c in range(classes):
        for split, count in (("train", train), ("test", test)):
            for i in range(count):
                _png(root / split / f"species_{c:03d}" / f"{i}.png", rng, side)
    return root


def write_csv_dataset(
    root: Path,
    *,
    classes: int,
    train: int = 2,
    test: int = 1,
    side: int = 24,
    names: bool = True,
    csv_name: str = "list.csv",
) -> Path:
    """Images under ``root/img/`` listed in ``root/<csv_name>`` (path,label,split)."""
    rng = np.random.default_rng(classes + 1)
    rows = []
    for c in range(classes):
        for split, count in (("train", train), ("test", test)):
            for i in range(count):
                rel = f"img/{c:03d}_{split}_{i}.png"
                _png(root / rel, rng, side)
                rows.append({"path": rel, "label": f"bird {c:03d}" if names else c, "split": split})
    csv = root / csv_name
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def imagefolder_params(tmp: Path, *, classes: int = 3, **sections) -> Params:
    """Params for a user's own image folder (``mine``, ``classes`` classes) written, prepared
    and sharded under ``tmp``: one epoch, batch 3, no LR search, one seed; ``sections``
    update params sections (e.g. ``model={"glsim": {"top_k": 5}}``). For the tests that
    need a trained run of a user dataset (predict, explain, export)."""
    import yaml

    from glsim.config import for_dataset, params_from_dict
    from glsim.data.registry import prepare_dataset
    from glsim.data.shards import write_shards

    source = write_imagefolder(tmp / "src", classes=classes)
    tree = tiny_params(tmp).model_dump(mode="json")
    tree["data"]["datasets"] = {"mine": {"source": f"imagefolder:{source}"}}
    tree["data"]["dataset"] = "mine"
    tree["protocol"].update({"lr_grid": [], "seeds": [1]})
    tree["train"].update({"epochs": 1, "batch_size": 3})
    tree["ablations"] = {"variants": {}, "tables": {}}
    for key, value in sections.items():
        tree[key].update(value)
    params = for_dataset(params_from_dict(yaml.safe_load(yaml.safe_dump(tree))), "mine")
    manifest = prepare_dataset(
        params.data.dataset_source, params.data.raw_dir, name="mine", params=params
    )
    write_shards(manifest, params.data.shards_dir / "mine", max_count=64, max_bytes=1 << 22)
    return params
