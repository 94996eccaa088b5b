"""Every registered dataset end to end on a miniature of its real layout, served over HTTP
from 127.0.0.1: download -> verify -> extract -> manifest -> shards -> validation -> one
batch through the loader. Plus the registry and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from miniatures import MINI_SIDE, MINIATURES, Miniature, make_tar, tiny_image

from glsim.cli import main
from glsim.config import ExpectedCounts
from glsim.data.cli import dataset_rows
from glsim.data.download import ChecksumError
from glsim.data.loader import make_loader
from glsim.data.manifest import read_manifest
from glsim.data.registry import (
    DatasetError,
    ManualDownloadRequired,
    apply_overrides,
    get_dataset,
    list_datasets,
    load_overrides,
    prepare_dataset,
    register_dataset,
)
from glsim.data.shards import write_shards
from glsim.data.transforms import build_transforms
from glsim.validation import ValidationFailed, validate_dataset

PAPER = {  # Table 9 (with the release differences of NABirds and VegFru)
    "cub": (200, 5994, 5794, False),
    "dafb": (3263, 368997, 94440, True),
    "dogs": (120, 12000, 8580, False),
    "flowers": (102, 2040, 6149, False),
    "food": (101, 75750, 25250, True),
    "inat17": (5089, 579184, 95986, True),
    "moe": (173, 11454, 2943, False),
    "nabirds": (555, 23929, 24633, False),
    "pets": (37, 3680, 3669, False),
    "vegfru": (292, 43800, 116931, False),
}
MANUAL = {"dafb", "moe", "nabirds", "vegfru"}


def _serve(file_server, name: str, mini: Miniature) -> dict:
    """Put the miniature's files on the server; return overrides pointing at them."""
    entries = {}
    for fname, data in mini.files.items():
        file_server.files[f"{name}/{fname}"] = data
        entries[fname] = {"url": file_server.url(f"{name}/{fname}"), "sha256": mini.sha256(fname)}
    return {name: entries}


def test_ten_datasets_registered_with_expected_counts():
    names = set(list_datasets())
    assert set(PAPER) | {"imagefolder", "csv"} <= names
    for name, (classes, train, test, large) in PAPER.items():
        spec = get_dataset(name)
        assert spec.expected == ExpectedCounts(num_classes=classes, train=train, test=test), name
        assert spec.large is large and spec.large == (train > 50_000), name
        assert spec.manual is (name in MANUAL), name
        assert spec.files and spec.parse is not None, name
        for f in spec.files:
            assert (f.url is None) == f.manual, f"{name}/{f.name}: manual files have no URL"
        if name not in MANUAL:
            assert all(f.url.startswith("http") for f in spec.files)


@pytest.mark.parametrize("name", sorted(MINIATURES))
def test_prepare_miniature_end_to_end(name, file_server, tmp_path):
    mini = MINIATURES[name]()
    spec = get_dataset(name)
    assert sorted(mini.files) == sorted(f.name for f in spec.files), (
        "miniature mirrors the real files"
    )
    overrides = _serve(file_server, name, mini)

    manifest_path = prepare_dataset(name, tmp_path, overrides=overrides, progress=False)

    assert manifest_path == tmp_path / name / "manifest.csv"
    df = read_manifest(manifest_path)
    counts = df["split"].value_counts().to_dict()
    assert counts == {"train": mini.train, "test": mini.test}
    assert df["label"].nunique() == mini.num_classes
    assert sorted(df["label"].unique()) == list(range(mini.num_classes))
    assert mini.class_name in set(df["class_name"])
    assert all((tmp_path / name / p).is_file() for p in df["path"]), (
        "paths are relative to the manifest"
    )
    assert not df["path"].duplicated().any()
    # every class is in both splits in these miniatures
    assert (df.groupby("label")["split"].nunique() == 2).all()
    for fname in mini.files:
        assert (tmp_path / name / "downloads" / f"{fname}.verified.json").is_file()

    # Run again: nothing is downloaded again, the manifest is reused.
    before = len(file_server.requests)
    assert prepare_dataset(name, tmp_path, overrides=overrides, progress=False) == manifest_path
    prepare_dataset(name, tmp_path, overrides=overrides, progress=False, force=True)
    assert len(file_server.requests) == before
    assert read_manifest(manifest_path).equals(df)

    _shard_validate_load(name, mini, manifest_path, tmp_path)


def _shard_validate_load(name: str, mini: Miniature, manifest_path: Path, tmp_path: Path) -> None:
    """The rest of the chain: shards -> validation (own counts pass, Table 9's fail) -> a batch."""
    df = read_manifest(manifest_path)
    hashes = [
        hashlib.sha256((manifest_path.parent / p).read_bytes()).hexdigest() for p in df["path"]
    ]
    assert len(set(hashes)) == len(df), "the miniature's images are distinct"

    shards = tmp_path / "shards" / name
    index = write_shards(manifest_path, shards, max_count=4, max_bytes=1 << 20)
    assert index["num_classes"] == mini.num_classes
    assert {s: e["count"] for s, e in index["splits"].items()} == {
        "train": mini.train,
        "test": mini.test,
    }
    assert len(index["splits"]["train"]["shards"]) > 1, "max_count splits the train set"

    own = ExpectedCounts(num_classes=mini.num_classes, train=mini.train, test=mini.test)
    report_path = tmp_path / "reports" / name / "validation.json"
    report = validate_dataset(
        manifest_path, shards, own, min_side=MINI_SIDE, report_path=report_path
    )
    assert report.success, report.summary()
    assert len(report.results) == 9  # every expectation ran, counts included
    assert json.loads(report_path.read_text())["success"] is True

    # The entry's real counts (Table 9) are what the stage checks: a miniature fails them.
    real = get_dataset(name).expected_counts()
    with pytest.raises(ValidationFailed) as info:
        validate_dataset(manifest_path, shards, real, min_side=MINI_SIDE)
    failed = {r.description for r in info.value.report.failed}
    assert {f"{real.num_classes} classes", f"{real.train} train images"} <= failed
    assert f"{real.test} test images" in failed
    assert f"{real.num_classes} classes" in str(info.value)

    loader = make_loader(
        shards,
        "test",
        transform=build_transforms(image_size=32, train=False),
        batch_size=mini.test,
        shuffle=False,
        seed=0,
        epoch=0,
        workers=0,
    )
    images, labels = next(iter(loader))
    assert images.shape == (mini.test, 3, 32, 32) and images.dtype == torch.float32
    assert torch.isfinite(images).all()
    test_labels = df.loc[df["split"] == "test", "label"]
    assert sorted(labels.tolist()) == sorted(test_labels.tolist())


@pytest.mark.parametrize("name", sorted(MANUAL))
def test_manual_dataset_says_what_to_download_and_where(name, tmp_path):
    spec = get_dataset(name)
    with pytest.raises(ManualDownloadRequired) as info:
        prepare_dataset(name, tmp_path)
    message = str(info.value)
    for f in spec.files:
        assert str(tmp_path / name / "downloads" / f.name) in message
    assert f"glsim data prepare {name}" in message


def test_manual_archive_placed_by_hand_is_verified_and_used(tmp_path):
    mini = MINIATURES["nabirds"]()
    downloads = tmp_path / "nabirds" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "nabirds.tar.gz").write_bytes(mini.files["nabirds.tar.gz"])
    # The real md5 does not match the miniature: it is refused and kept aside.
    with pytest.raises(ChecksumError, match="nabirds.tar.gz"):
        prepare_dataset("nabirds", tmp_path)
    assert (downloads / "nabirds.tar.gz.corrupt").exists()
    assert not (downloads / "nabirds.tar.gz").exists()
    # With the checksum of what was placed (an override without URL), it is used.
    (downloads / "nabirds.tar.gz").write_bytes(mini.files["nabirds.tar.gz"])
    overrides = {"nabirds": {"nabirds.tar.gz": {"sha256": mini.sha256("nabirds.tar.gz")}}}
    df = read_manifest(prepare_dataset("nabirds", tmp_path, overrides=overrides))
    assert len(df) == mini.train + mini.test


def test_checksum_mismatch_from_mirror_is_an_error(file_server, tmp_path):
    mini = MINIATURES["cub"]()
    overrides = _serve(file_server, "cub", mini)
    overrides["cub"]["CUB_200_2011.tgz"]["sha256"] = "0" * 64
    with pytest.raises(ChecksumError):
        prepare_dataset("cub", tmp_path, overrides=overrides)
    assert (tmp_path / "cub/downloads/CUB_200_2011.tgz.corrupt").exists()
    assert not (tmp_path / "cub/manifest.csv").exists()
    assert not (tmp_path / "cub/extracted").exists()


def test_path_traversal_archive_is_refused_end_to_end(file_server, tmp_path):
    from glsim.data.extract import UnsafeArchiveError

    evil = make_tar({"CUB_200_2011/images.txt": b"", "../../escaped.txt": b"evil"})
    file_server.files["cub.tgz"] = evil
    import hashlib

    overrides = {
        "cub": {
            "CUB_200_2011.tgz": {
                "url": file_server.url("cub.tgz"),
                "sha256": hashlib.sha256(evil).hexdigest(),
            }
        }
    }
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./\.\./escaped\.txt'"):
        prepare_dataset("cub", tmp_path / "root", overrides=overrides)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_overrides_from_env_yaml(file_server, tmp_path, monkeypatch):
    mini = MINIATURES["pets"]()
    overrides = _serve(file_server, "pets", mini)
    path = tmp_path / "mirrors.yaml"
    path.write_text(yaml.safe_dump(overrides))
    monkeypatch.setenv("GLSIM_REGISTRY_OVERRIDES", str(path))
    df = read_manifest(prepare_dataset("pets", tmp_path / "raw", progress=False))
    assert len(df) == mini.train + mini.test


def test_override_url_only_keeps_published_checksum():
    spec = apply_overrides(
        get_dataset("food"), {"food": {"food-101.tar.gz": {"url": "http://m/f.tgz"}}}
    )
    assert spec.files[0].url == "http://m/f.tgz"
    assert spec.files[0].md5 == "85eeb15f3717b99a5da872d97d918f87"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (
            {"cub": {"CUB.tgz": {"url": "http://x"}}},
            r"no file 'CUB\.tgz'.*did you mean 'CUB_200_2011\.tgz'",
        ),
        ({"cub": {"CUB_200_2011.tgz": {"ur": "http://x"}}}, r"unknown key\(s\) \['ur'\]"),
        ({"cub": ["x"]}, "'cub' must map file names"),
    ],
)
def test_bad_overrides_name_the_problem(tmp_path, content, match):
    path = tmp_path / "o.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(DatasetError, match=match):
        prepare_dataset("cub", tmp_path, overrides=load_overrides(path))


def test_unknown_dataset_suggests_closest():
    with pytest.raises(KeyError, match="did you mean 'nabirds'"):
        get_dataset("nabird")


def test_register_twice_is_an_error():
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset("cub")(lambda d: None)


def test_imagefolder_and_csv(tmp_path):
    source = tmp_path / "mine"
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("robin", "wren"):
            (source / split / cls).mkdir(parents=True)
            for i in range(n):
                (source / split / cls / f"{i}.jpg").write_bytes(tiny_image(i))
    df = read_manifest(prepare_dataset(f"imagefolder:{source}", tmp_path / "raw"))
    assert df["split"].value_counts().to_dict() == {"train": 6, "test": 4}
    assert list(df.drop_duplicates("label").sort_values("label")["class_name"]) == ["robin", "wren"]
    assert (tmp_path / "raw" / "imagefolder-mine" / df["path"][0]).resolve().is_file()

    table = pd.DataFrame(
        {"path": ["train/robin/0.jpg", "train/wren/0.jpg", "test/robin/0.jpg"], "label": ["robin", "wren", "robin"],
         "split": ["train", "train", "test"]}
    )  # fmt: skip
    table.to_csv(source / "list.csv", index=False)
    df = read_manifest(prepare_dataset(f"csv:{source / 'list.csv'}", tmp_path / "raw"))
    assert len(df) == 3 and set(df["class_name"]) == {"robin", "wren"}

    table.assign(split=["train", "val", "test"]).to_csv(source / "bad.csv", index=False)
    with pytest.raises(DatasetError, match=r"row 3 has split 'val'"):
        prepare_dataset(f"csv:{source / 'bad.csv'}", tmp_path / "raw")
    with pytest.raises(DatasetError, match="missing split folder"):
        prepare_dataset(f"imagefolder:{source / 'train'}", tmp_path / "raw")


def test_cli_list_json(tmp_path, capsys):
    assert main(["data", "list", "--json", "--root", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    for name, (classes, train, test, _) in PAPER.items():
        row = by_name[name]
        assert (row["classes"], row["train"], row["test"]) == (classes, train, test)
        assert row["manual"] is (name in MANUAL)
        assert row["status"] == "missing"


def test_cli_prepare_and_status(file_server, tmp_path, capsys, monkeypatch):
    mini = MINIATURES["flowers"]()
    path = tmp_path / "mirrors.yaml"
    path.write_text(yaml.safe_dump(_serve(file_server, "flowers", mini)))
    root = tmp_path / "raw"
    assert main(["data", "prepare", "flowers", "--root", str(root), "--overrides", str(path)]) == 0
    assert capsys.readouterr().out.strip() == str(root / "flowers" / "manifest.csv")
    statuses = {r["name"]: r["status"] for r in dataset_rows(root)}
    assert statuses["flowers"] == "prepared" and statuses["cub"] == "missing"

    assert main(["data", "prepare", "vegfru", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert str(root / "vegfru" / "downloads" / "vegfru-dataset.zip") in err
    assert main(["data", "prepare", "nosuch", "--root", str(root)]) == 2
