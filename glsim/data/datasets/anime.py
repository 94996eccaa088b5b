"""Anime character datasets: DAF:re full-body ("DAFB") and moeimouto faces ("Moe").

Both are manual downloads (Google Drive / Kaggle; the images belong to their artists).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd

from glsim.config import ExpectedCounts
from glsim.data.datasets import IMAGE_SUFFIXES, find_dir, make_manifest
from glsim.data.registry import DatasetError, RemoteFile, register_dataset

_DAFRE_DRIVE = "https://drive.google.com/drive/folders/1S_T8R7gbY47dfRH9dUBXOstlOwVuMmXe"

DAFB_FILES = (
    RemoteFile(name="dafre_full.tar.gz", manual=True),
    RemoteFile(name="labels.tar.gz", manual=True),
)
MOE_FILES = (RemoteFile(name="moeimouto_animefacecharacterdataset.tar.gz", manual=True),)


def _read_split_csv(path: Path) -> pd.DataFrame:
    """DAF:re ``class_id,dir`` lists; the release has no header, the reference's copies do."""
    if not path.is_file():
        raise DatasetError(f"DAF:re list missing: {path}; labels.tar.gz looks incomplete")
    df = pd.read_csv(path, header=None, names=["class_id", "dir"], dtype=str)
    if not df.empty and not df.iloc[0]["class_id"].isdigit():
        df = df.iloc[1:]
    return df


@register_dataset(
    "dafb",
    description="DAF:re full-body anime characters (3,263 classes)",
    files=DAFB_FILES,
    expected=ExpectedCounts(num_classes=3263, train=368997, test=94440),
    large=True,
    manual=True,
    manual_steps=(
        f"From the DAF:re Google Drive folder ({_DAFRE_DRIVE}, linked from "
        "github.com/arkel23/Danbooru2018AnimeCharacterRecognitionDataset_Revamped), download "
        "data/dafre_full.tar.gz and labels.tar.gz."
    ),
    homepage="https://github.com/arkel23/Danbooru2018AnimeCharacterRecognitionDataset_Revamped",
    notes="train = labels train.csv + val.csv, test = test.csv; images under fullMin256/",
)
def parse_dafb(dataset_dir: Path) -> pd.DataFrame:
    extracted = dataset_dir / "extracted"
    images_root = find_dir(extracted, "fullMin256") / "fullMin256"
    lists = find_dir(extracted, "train.csv", "test.csv", "classid_classname.csv")
    classes = _read_split_csv(lists / "classid_classname.csv").rename(columns={"dir": "name"})
    names = dict(zip(classes["class_id"].astype(int), classes["name"], strict=True))
    paths, labels, splits = [], [], []
    for list_name, split in (("train", "train"), ("val", "train"), ("test", "test")):
        if list_name == "val" and not (lists / "val.csv").is_file():
            continue
        df = _read_split_csv(lists / f"{list_name}.csv")
        paths += [images_root / d for d in df["dir"]]
        labels += df["class_id"].astype(int).tolist()
        splits += [split] * len(df)
    return make_manifest(paths, labels, splits, [names[i] for i in range(len(names))], dataset_dir)


_MOE_CLASS = re.compile(r"^\d{3}_")


def _stable_key(path: Path) -> str:
    return hashlib.sha1(path.name.encode()).hexdigest()


@register_dataset(
    "moe",
    description="moeimouto faces (173 anime characters)",
    files=MOE_FILES,
    expected=ExpectedCounts(num_classes=173, train=11454, test=2943),
    manual=True,
    manual_steps=(
        "Download moeimouto_animefacecharacterdataset.tar.gz (Google Drive id "
        "1bEF1CrWLYfRJYauBY9bpiZ-LMnyEn24w, as in GLSim's tools/preprocess/download_daf_moe.py), "
        "or the moeimouto-faces folder of kaggle.com/datasets/mylesoneill/tagged-anime-illustrations "
        "packed as a .tar.gz with that name. It holds one folder per character (000_hatsune_miku/ ...)."
    ),
    homepage="http://www.nurs.or.jp/~nagadomi/animeface-character-dataset/",
    notes=(
        "no official split: as the reference, per class the first int(0.8 n) images are train "
        "and the rest test (ordered by a hash of the file name, so it is deterministic)"
    ),
)
def parse_moe(dataset_dir: Path) -> pd.DataFrame:
    extracted = dataset_dir / "extracted"
    candidates = [d for d in extracted.rglob("*") if d.is_dir() and _MOE_CLASS.match(d.name)]
    if not candidates:
        raise DatasetError(f"no character folders (NNN_name/) found under {extracted}")
    parents = pd.Series([d.parent for d in candidates]).value_counts()
    root = parents.index[0]
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and _MOE_CLASS.match(d.name))
    paths, labels, splits = [], [], []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(
            (p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_stable_key
        )
        n_train = int(len(images) * 0.8)
        paths += images
        labels += [label] * len(images)
        splits += ["train"] * n_train + ["test"] * (len(images) - n_train)
    return make_manifest(paths, labels, splits, [d.name for d in class_dirs], dataset_dir)
