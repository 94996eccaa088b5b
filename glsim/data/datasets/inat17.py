"""iNaturalist 2017 (Van Horn et al. 2018): the paper's test set is the official val set."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from glsim.config import ExpectedCounts
from glsim.data.datasets import find_dir, make_manifest
from glsim.data.registry import RemoteFile, register_dataset

_URL = "https://ml-inat-competition-datasets.s3.amazonaws.com/2017/"
INAT17_FILES = (
    # md5 published in visipedia/inat_comp 2017/README.md (186 GB).
    RemoteFile(
        name="train_val_images.tar.gz",
        url=_URL + "train_val_images.tar.gz",
        md5="7c784ea5e424efaec655bd392f87301f",
    ),
    # No checksum published for the annotations.
    RemoteFile(name="train_val2017.zip", url=_URL + "train_val2017.zip"),
)


def _read_coco(path: Path) -> tuple[dict[int, str], dict[int, int], dict[int, str]]:
    """file names by image id, category by image id, category names by id."""
    data = json.loads(path.read_text())
    files = {im["id"]: im["file_name"] for im in data["images"]}
    cats = {a["image_id"]: a["category_id"] for a in data["annotations"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    return files, cats, names


@register_dataset(
    "inat17",
    description="iNaturalist 2017 (5,089 species; test = official val)",
    files=INAT17_FILES,
    expected=ExpectedCounts(num_classes=5089, train=579184, test=95986),
    large=True,
    homepage="https://github.com/visipedia/inat_comp/tree/master/2017",
    notes="train2017.json -> train, val2017.json -> test; file_name relative to the archive root",
)
def parse_inat17(dataset_dir: Path) -> pd.DataFrame:
    extracted = dataset_dir / "extracted"
    ann = find_dir(extracted, "train2017.json", "val2017.json")
    images_root = find_dir(extracted, "train_val_images")
    paths, labels, splits = [], [], []
    names: dict[int, str] = {}
    for json_name, split in (("train2017.json", "train"), ("val2017.json", "test")):
        files, cats, split_names = _read_coco(ann / json_name)
        names.update(split_names)
        for image_id in sorted(files):
            paths.append(images_root / files[image_id])
            labels.append(cats[image_id])
            splits.append(split)
    class_names = [names[i] for i in range(len(names))]
    return make_manifest(paths, labels, splits, class_names, dataset_dir)
