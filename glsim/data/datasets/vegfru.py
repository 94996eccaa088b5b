"""VegFru (Hou et al. 2017): 200 vegetables + 92 fruits; manual download.

Train is the official train + val lists (29,200 + 14,600 = 43,800), test the official test
list. Table 9 says 116,391 test images; the list in the release (and the reference's CSV)
has 116,931, which is what is configured.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from glsim.config import ExpectedCounts
from glsim.data.datasets import find_dir, make_manifest, read_table
from glsim.data.registry import RemoteFile, register_dataset

# The publisher distributes through Baidu Pan only and gives no checksum; the archive name
# is the one this entry expects the user to place (any zip/tar with the official layout).
VEGFRU_FILES = (RemoteFile(name="vegfru-dataset.zip", manual=True),)


@register_dataset(
    "vegfru",
    description="VegFru (292 vegetable and fruit classes)",
    files=VEGFRU_FILES,
    expected=ExpectedCounts(num_classes=292, train=43800, test=116931),
    manual=True,
    manual_steps=(
        "Download the VegFru dataset from the link on https://github.com/ustc-vim/vegfru "
        "(Baidu Pan) or its Kaggle copy (kaggle.com/datasets/zhaoyj688/vegfru). It must contain "
        "veg200_images/, fru92_images/ and vegfru_list/vegfru_{train,val,test}.txt. Zip that "
        "folder (or rename the archive you got) to vegfru-dataset.zip."
    ),
    homepage="https://github.com/ustc-vim/vegfru",
    notes="train = vegfru_train.txt + vegfru_val.txt; test list has 116,931 rows (paper: 116,391)",
)
def parse_vegfru(dataset_dir: Path) -> pd.DataFrame:
    extracted = dataset_dir / "extracted"
    lists = find_dir(extracted, "vegfru_train.txt", "vegfru_test.txt", max_depth=4)
    images_root = find_dir(extracted, "veg200_images", "fru92_images", max_depth=4)
    paths, labels, splits = [], [], []
    names: dict[int, str] = {}
    for list_name, split in (("train", "train"), ("val", "train"), ("test", "test")):
        table = read_table(lists / f"vegfru_{list_name}.txt", ["path", "label"])
        for rel, label in zip(table["path"], table["label"].astype(int), strict=True):
            paths.append(images_root / rel)
            labels.append(label)
            splits.append(split)
            names.setdefault(label, rel.split("/")[1])
    return make_manifest(paths, labels, splits, [names[i] for i in range(len(names))], dataset_dir)
