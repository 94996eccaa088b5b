"""NABirds (Van Horn et al. 2015): North American birds; licence requires a manual download.

The paper's Table 9 lists 600 classes; the official release labels images with 555 leaf
classes (the other ids are inner nodes of ``hierarchy.txt``), so 555 is what is configured.
Labels are the labelled class ids in increasing order.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from glsim.config import ExpectedCounts
from glsim.data.datasets import find_dir, make_manifest, read_table
from glsim.data.registry import RemoteFile, register_dataset

NABIRDS_FILES = (
    # md5 as used by lvyilin/pytorch-fgvc-dataset and the GLSim reference (not published
    # by the Cornell Lab itself).
    RemoteFile(name="nabirds.tar.gz", md5="df21a9e4db349a14e2b08adfd45873bd", manual=True),
)


def _class_names(path: Path) -> dict[str, str]:
    """``classes.txt`` lines are ``ID name with spaces``."""
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            class_id, _, name = line.strip().partition(" ")
            names[class_id] = name
    return names


@register_dataset(
    "nabirds",
    description="NABirds (555 labelled leaf classes of North American birds)",
    files=NABIRDS_FILES,
    expected=ExpectedCounts(num_classes=555, train=23929, test=24633),
    manual=True,
    manual_steps=(
        "Request and download nabirds.tar.gz from https://dl.allaboutbirds.org/nabirds "
        "(Cornell Lab of Ornithology; accept the terms of use)."
    ),
    homepage="https://dl.allaboutbirds.org/nabirds",
    notes="Table 9 says 600 classes; the release labels 555 leaf classes",
)
def parse_nabirds(dataset_dir: Path) -> pd.DataFrame:
    base = find_dir(dataset_dir / "extracted", "images.txt", "train_test_split.txt")
    images = read_table(base / "images.txt", ["img_id", "path"])
    labels = read_table(base / "image_class_labels.txt", ["img_id", "class_id"])
    split = read_table(base / "train_test_split.txt", ["img_id", "is_train"])
    df = images.merge(labels, on="img_id").merge(split, on="img_id").sort_values("path")
    names = _class_names(base / "classes.txt")
    class_ids = sorted(df["class_id"].unique(), key=int)
    label_of = {c: i for i, c in enumerate(class_ids)}
    return make_manifest(
        (base / "images" / p for p in df["path"]),
        df["class_id"].map(label_of),
        df["is_train"].map({"1": "train", "0": "test"}),
        [names.get(c, c) for c in class_ids],
        dataset_dir,
    )
