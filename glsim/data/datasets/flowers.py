"""Oxford Flowers-102 (Nilsback & Zisserman 2008): the paper trains on train+val (2,040)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from glsim.config import ExpectedCounts
from glsim.data.datasets import find_dir, make_manifest
from glsim.data.registry import DatasetError, RemoteFile, register_dataset

_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
# md5s as published in torchvision.datasets.Flowers102.
FLOWERS_FILES = (
    RemoteFile(
        name="102flowers.tgz", url=_URL + "102flowers.tgz", md5="52808999861908f626f3c1f4e79d11fa"
    ),
    RemoteFile(
        name="imagelabels.mat",
        url=_URL + "imagelabels.mat",
        md5="e0620be6f572b9609742df49c70aed4d",
        extract=False,
    ),
    RemoteFile(
        name="setid.mat",
        url=_URL + "setid.mat",
        md5="a5357ecc9cb78c4bef273ce3793fc85c",
        extract=False,
    ),
)


def _class_names(n: int) -> list[str]:
    """The 102 names as torchvision lists them (the .mat files carry only numbers)."""
    names: list[str] = []
    if n == 102:
        try:
            from torchvision.datasets import Flowers102

            names = list(Flowers102.classes)
        except (ImportError, AttributeError):
            pass
    return names if len(names) == n else [f"flower_{i + 1:03d}" for i in range(n)]


@register_dataset(
    "flowers",
    description="Oxford Flowers-102 (train+val vs test)",
    files=FLOWERS_FILES,
    expected=ExpectedCounts(num_classes=102, train=2040, test=6149),
    homepage="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
    notes="setid.mat trnid+valid -> train, tstid -> test; imagelabels.mat labels 1-based",
)
def parse_flowers(dataset_dir: Path) -> pd.DataFrame:
    from scipy.io import loadmat

    downloads = dataset_dir / "downloads"
    for name in ("imagelabels.mat", "setid.mat"):
        if not (downloads / name).is_file():
            raise DatasetError(f"{downloads / name} is missing; prepare the dataset again")
    labels = loadmat(downloads / "imagelabels.mat", squeeze_me=True)["labels"].astype(int) - 1
    setid = loadmat(downloads / "setid.mat", squeeze_me=True)
    jpg = find_dir(dataset_dir / "extracted", "jpg") / "jpg"
    paths, ys, splits = [], [], []
    for key, split in (("trnid", "train"), ("valid", "train"), ("tstid", "test")):
        for image_id in sorted(int(i) for i in setid[key]):
            paths.append(jpg / f"image_{image_id:05d}.jpg")
            ys.append(int(labels[image_id - 1]))
            splits.append(split)
    return make_manifest(paths, ys, splits, _class_names(int(labels.max()) + 1), dataset_dir)
