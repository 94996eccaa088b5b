"""Loader: batch shapes, full epochs, determinism per (seed, epoch), corrupt shards."""

from __future__ import annotations

import gc
import warnings
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
import torch
from tiny import write_image_dataset

from glsim.data.loader import dataset_length, make_loader, num_batches
from glsim.data.shards import ShardError, read_index, read_samples, write_shards
from glsim.data.transforms import build_transforms

SIZE = 16


write_tiny_dataset = partial(write_image_dataset, train=7, test=3)


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loader")
    manifest = write_tiny_dataset(root / "raw")
    write_shards(manifest, root / "shards", max_count=4, max_bytes=1 << 20)  # 6 train shards
    return root / "shards"


def _loader(shards_dir: Path, *, epoch: int = 0, workers: int = 0, split: str = "train", **kw):
    transform = build_transforms(image_size=SIZE, train=split == "train", augreg="strong")
    kw.setdefault("shuffle", split == "train")
    return make_loader(
        shards_dir,
        split,
        transform=transform,
        batch_size=4,
        seed=7,
        epoch=epoch,
        workers=workers,
        **kw,
    )


def _epoch(loader) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(batch[:2]) for batch in loader]


def _same(a: list[tuple[torch.Tensor, ...]], b: list[tuple[torch.Tensor, ...]]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True)
    )


def test_batches_have_the_model_input_shapes(shards_dir: Path) -> None:
    images, labels = next(iter(_loader(shards_dir)))
    assert images.shape == (4, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert labels.shape == (4,) and labels.dtype == torch.int64


@pytest.mark.parametrize("workers", [0, 2])
def test_a_full_epoch_yields_exactly_the_index_count(shards_dir: Path, workers: int) -> None:
    assert dataset_length(shards_dir, "train") == 21
    labels = torch.cat([y for _, y in _loader(shards_dir, workers=workers)])
    assert len(labels) == dataset_length(shards_dir, "train")
    samples = read_samples(shards_dir)
    assert Counter(labels.tolist()) == Counter(
        samples.loc[samples["split"] == "train", "label"].tolist()
    )


@pytest.mark.parametrize(("workers", "drop_last"), [(0, False), (0, True), (2, False), (2, True)])
def test_num_batches_predicts_the_loader(shards_dir: Path, workers: int, drop_last: bool) -> None:
    loader = _loader(shards_dir, epoch=1, workers=workers, drop_last=drop_last)
    expected = num_batches(
        shards_dir,
        "train",
        batch_size=4,
        workers=workers,
        drop_last=drop_last,
        shuffle=True,
        seed=7,
        epoch=1,
    )
    assert sum(1 for _ in loader) == expected


def test_meta_has_keys_and_boxes(shards_dir: Path) -> None:
    batches = list(_loader(shards_dir, split="test", with_meta=True))
    keys = [k for _, _, meta in batches for k in meta["key"]]
    samples = read_samples(shards_dir)
    assert (
        keys == samples.loc[samples["split"] == "test", "key"].tolist()
    )  # unshuffled: index order
    _, _, meta = batches[0]
    assert meta["box"].shape == (4, 4) and meta["box"].dtype == torch.float32
    assert meta["box"][0].tolist() == [2, 3, 20, 21]
    assert meta["size"].tolist() == [[24, 24]] * 4


def test_same_seed_and_epoch_give_the_same_batches(shards_dir: Path) -> None:
    assert _same(_epoch(_loader(shards_dir, epoch=3)), _epoch(_loader(shards_dir, epoch=3)))
    loader = _loader(shards_dir, epoch=3)
    assert _same(_epoch(loader), _epoch(loader))  # iterating again replays the epoch


def test_epochs_differ_in_order_and_augmentation(shards_dir: Path) -> None:
    a, b = _epoch(_loader(shards_dir, epoch=0)), _epoch(_loader(shards_dir, epoch=1))
    assert [y.tolist() for _, y in a] != [y.tolist() for _, y in b]
    assert not _same(a, b)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_bit_reproducible_per_seed_and_epoch(shards_dir: Path, workers: int) -> None:
    a = _epoch(_loader(shards_dir, epoch=4, workers=workers))
    assert _same(a, _epoch(_loader(shards_dir, epoch=4, workers=workers)))
    assert all(x.dtype == torch.float32 for x, _ in a)
    assert not _same(a, _epoch(_loader(shards_dir, epoch=5, workers=workers)))


class _OpenCVThreads:
    """A transform that labels each sample with its worker's OpenCV thread count."""

    def __init__(self):
        self.inner = build_transforms(image_size=SIZE, train=False)
        self.finish = self.inner.finish

    def set_random_seed(self, seed: int | None) -> None:
        self.inner.set_random_seed(seed)

    def sample(self, pixels):
        import cv2

        image, _ = self.inner.sample(pixels)
        return image, torch.full((4,), cv2.getNumThreads(), dtype=torch.int16)


def test_workers_run_opencv_on_one_thread(shards_dir: Path) -> None:
    loader = make_loader(
        shards_dir, "train", transform=_OpenCVThreads(), batch_size=4, shuffle=False, seed=0,
        epoch=0, workers=2,
    )  # fmt: skip
    batches = list(loader.loader)  # the DataLoader's raw batches: (images, threads, labels)
    assert batches and all(b[1].eq(1).all() for b in batches)


def test_workers_are_deterministic_and_seeded_apart(shards_dir: Path) -> None:
    a = _epoch(_loader(shards_dir, epoch=2, workers=2))
    assert _same(a, _epoch(_loader(shards_dir, epoch=2, workers=2)))
    # The two workers must not replay the same augmentation stream: the first images of
    # their first batches (flat test images differ only through augmentation) differ.
    assert not torch.equal(a[0][0], a[1][0])


def test_no_resource_warnings(shards_dir: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _epoch(_loader(shards_dir))
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_truncated_shard_is_named(shards_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "shards"
    copy.mkdir()
    for path in shards_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    victim = copy / read_index(copy)["splits"]["train"]["shards"][2]["name"]
    victim.write_bytes(victim.read_bytes()[:1536])  # ends on a member boundary: a valid-looking tar
    with pytest.raises(ShardError, match=rf"{victim.name}.*truncated"):
        _epoch(_loader(copy, shuffle=False))


def test_corrupt_shard_is_named(shards_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "shards"
    copy.mkdir()
    for path in shards_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    victim = copy / read_index(copy)["splits"]["train"]["shards"][1]["name"]
    data = bytearray(victim.read_bytes())
    data[2048:2560] = b"\xff" * 512  # same size, garbage where a member header should be
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=rf"cannot read shard .*{victim.name}"):
        _epoch(_loader(copy, shuffle=False))


def test_unknown_split_is_named(shards_dir: Path) -> None:
    with pytest.raises(ShardError, match="no split 'val'"):
        dataset_length(shards_dir, "val")


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_does_not_decode_is_named_by_the_users_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: int
) -> None:
    """The manifest lies beside the user's folder (``../../mine/...``), so the shard key
    reads ``__/__/mine/...``; the error names the file the user can open, in one line, also
    when a DataLoader worker raised it."""
    import pandas as pd

    from glsim.data.manifest import write_manifest
    from glsim.errors import guarded

    source = tmp_path / "mine"
    write_tiny_dataset(source)
    bad = source / "images/class_1/000.png"
    bad.write_bytes(b"not an image")
    manifest = tmp_path / "raw" / "ds" / "manifest.csv"
    manifest.parent.mkdir(parents=True)
    df = pd.read_csv(source / "manifest.csv")
    df["path"] = "../../mine/" + df["path"]
    write_manifest(df, manifest)
    write_shards(manifest, tmp_path / "shards", max_count=50, max_bytes=1 << 20)
    loader = _loader(tmp_path / "shards", workers=workers, images_root=manifest.parent)
    assert guarded(lambda: list(loader), debug=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"error: image {bad} (sample '__/__/mine/images/class_1/000')" in err[0]
    assert "not an image format PIL recognises" in err[0] and "BytesIO" not in err[0]
