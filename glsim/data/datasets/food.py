"""Food-101 (Bossard et al. 2014): 101 dishes, meta/train.txt and meta/test.txt."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from glsim.config import ExpectedCounts
from glsim.data.datasets import find_dir, make_manifest
from glsim.data.registry import RemoteFile, register_dataset

# URL and md5 as in torchvision.datasets.Food101.
FOOD_FILES = (
    RemoteFile(
        name="food-101.tar.gz",
        url="http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
        md5="85eeb15f3717b99a5da872d97d918f87",
    ),
)


@register_dataset(
    "food",
    description="Food-101 (101 dishes)",
    files=FOOD_FILES,
    expected=ExpectedCounts(num_classes=101, train=75750, test=25250),
    large=True,
    homepage="https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
    notes="meta/classes.txt order; meta/{train,test}.txt lines 'class/id'",
)
def parse_food(dataset_dir: Path) -> pd.DataFrame:
    base = find_dir(dataset_dir / "extracted", "meta", "images")
    classes = [c for c in (base / "meta" / "classes.txt").read_text().split() if c]
    label_of = {c: i for i, c in enumerate(classes)}
    paths, labels, splits = [], [], []
    for split in ("train", "test"):
        for line in (base / "meta" / f"{split}.txt").read_text().split():
            paths.append(base / "images" / f"{line}.jpg")
            labels.append(label_of[line.split("/", 1)[0]])
            splits.append(split)
    return make_manifest(paths, labels, splits, classes, dataset_dir)
