"""Stanford Dogs (Khosla et al. 2011): 120 breeds, official train_list.mat / test_list.mat."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from glsim.config import ExpectedCounts
from glsim.data.datasets import find_dir, make_manifest
from glsim.data.registry import DatasetError, RemoteFile, register_dataset

_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs/"
# The publisher gives no checksums; the sha256 received is recorded on download.
# annotation.tar (bounding boxes) is not needed for classification and is not fetched.
DOGS_FILES = (
    RemoteFile(name="images.tar", url=_URL + "images.tar"),
    RemoteFile(name="lists.tar", url=_URL + "lists.tar"),
)


def _read_list(path: Path) -> tuple[list[str], list[int]]:
    from scipy.io import loadmat

    if not path.is_file():
        raise DatasetError(f"official list missing: {path}; lists.tar looks incomplete")
    mat = loadmat(path, squeeze_me=True)
    files = [str(f) for f in mat["file_list"]]
    labels = [int(x) - 1 for x in mat["labels"]]
    return files, labels


def breed_name(folder: str) -> str:
    """``n02085620-Chihuahua`` -> ``Chihuahua``."""
    return folder.split("-", 1)[1] if "-" in folder else folder


@register_dataset(
    "dogs",
    description="Stanford Dogs (120 breeds)",
    files=DOGS_FILES,
    expected=ExpectedCounts(num_classes=120, train=12000, test=8580),
    homepage="http://vision.stanford.edu/aditya86/ImageNetDogs/",
    notes="train_list.mat / test_list.mat (file_list, labels 1-based)",
)
def parse_dogs(dataset_dir: Path) -> pd.DataFrame:
    base = find_dir(dataset_dir / "extracted", "Images", "train_list.mat")
    paths, labels, splits = [], [], []
    names: dict[int, str] = {}
    for split in ("train", "test"):
        files, split_labels = _read_list(base / f"{split}_list.mat")
        for f, y in zip(files, split_labels, strict=True):
            paths.append(base / "Images" / f)
            labels.append(y)
            splits.append(split)
            names.setdefault(y, breed_name(f.split("/", 1)[0]))
    class_names = [names[i] for i in range(len(names))]
    return make_manifest(paths, labels, splits, class_names, dataset_dir)
