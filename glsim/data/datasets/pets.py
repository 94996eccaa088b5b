"""Oxford-IIIT Pets (Parkhi et al. 2012): 37 breeds, annotations/trainval.txt and test.txt."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from glsim.config import ExpectedCounts
from glsim.data.datasets import find_dir, make_manifest
from glsim.data.registry import RemoteFile, register_dataset

_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
# md5s as published in torchvision.datasets.OxfordIIITPet.
PETS_FILES = (
    RemoteFile(
        name="images.tar.gz", url=_URL + "images.tar.gz", md5="5c4f3ee8e5d25df40f4fd59a7f44e54c"
    ),
    RemoteFile(
        name="annotations.tar.gz",
        url=_URL + "annotations.tar.gz",
        md5="95a8c909bbe2e81eed6a22bccdf3f68f",
    ),
)


def breed_name(image_id: str) -> str:
    """``american_bulldog_100`` -> ``American Bulldog`` (torchvision's naming)."""
    return " ".join(part.title() for part in image_id.rsplit("_", 1)[0].split("_"))


@register_dataset(
    "pets",
    description="Oxford-IIIT Pets (37 breeds)",
    files=PETS_FILES,
    expected=ExpectedCounts(num_classes=37, train=3680, test=3669),
    homepage="https://www.robots.ox.ac.uk/~vgg/data/pets/",
    notes="annotations/trainval.txt -> train, test.txt -> test; lines 'id class species breed'",
)
def parse_pets(dataset_dir: Path) -> pd.DataFrame:
    base = find_dir(dataset_dir / "extracted", "images", "annotations")
    paths, labels, splits = [], [], []
    names: dict[int, str] = {}
    for list_name, split in (("trainval", "train"), ("test", "test")):
        for line in (base / "annotations" / f"{list_name}.txt").read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            image_id, class_id, *_ = line.split()
            label = int(class_id) - 1
            paths.append(base / "images" / f"{image_id}.jpg")
            labels.append(label)
            splits.append(split)
            names.setdefault(label, breed_name(image_id))
    return make_manifest(paths, labels, splits, [names[i] for i in range(len(names))], dataset_dir)
