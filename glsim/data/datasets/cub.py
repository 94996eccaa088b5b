"""CUB-200-2011 (Wah et al. 2011): 200 bird species, official train/test split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from glsim.config import ExpectedCounts
from glsim.data.datasets import find_dir, make_manifest, read_table
from glsim.data.registry import RemoteFile, register_dataset

CUB_FILES = (
    RemoteFile(
        name="CUB_200_2011.tgz",
        url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
        md5="97eceeb196236b17998738112f37df78",
    ),
)


def class_name_from_folder(folder: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black_footed_Albatross``."""
    return folder.split(".", 1)[1] if "." in folder else folder


@register_dataset(
    "cub",
    description="CUB-200-2011 birds (200 species)",
    files=CUB_FILES,
    expected=ExpectedCounts(num_classes=200, train=5994, test=5794),
    homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
    notes="images.txt + image_class_labels.txt + train_test_split.txt (1 = train)",
)
def parse_cub(dataset_dir: Path) -> pd.DataFrame:
    base = find_dir(dataset_dir / "extracted", "images.txt", "train_test_split.txt")
    images = read_table(base / "images.txt", ["img_id", "path"])
    labels = read_table(base / "image_class_labels.txt", ["img_id", "class_id"])
    split = read_table(base / "train_test_split.txt", ["img_id", "is_train"])
    classes = read_table(base / "classes.txt", ["class_id", "folder"])
    df = images.merge(labels, on="img_id").merge(split, on="img_id")
    df = df.sort_values("img_id", key=lambda s: s.astype(int))
    names = [
        class_name_from_folder(f)
        for f in classes.sort_values("class_id", key=lambda s: s.astype(int))["folder"]
    ]
    return make_manifest(
        (base / "images" / p for p in df["path"]),
        df["class_id"].astype(int) - 1,
        df["is_train"].map({"1": "train", "0": "test"}),
        names,
        dataset_dir,
    )
