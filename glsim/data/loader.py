"""WebDataset shards -> torch batches, deterministic given (seed, epoch).

The pipeline is webdataset's own stages (``SimpleShardList``, ``split_by_worker``,
``tar_file_iterator``, ``group_by_keys``, ``shuffle``) in a ``wds.DataPipeline``, fed to a
``torch.utils.data.DataLoader`` that batches. Two stages are ours: :func:`open_shards` replaces webdataset's opener, which never closes the files it
opens (ResourceWarnings) and, with a ``handler`` that swallows errors, would hide a
truncated shard; ours checks each shard's size and sample count against ``index.json`` and turns any read
error into a :class:`~glsim.data.shards.ShardError` naming the shard. And the transform
stage reseeds the albumentations pipeline per (seed, epoch, worker), since albumentations
2.0.8 gives every DataLoader worker the same copy of its random state.

Workers ship uint8 images (a quarter of float32 through the worker pipes) with the erasing
rectangle each drew; :class:`Batches` finishes every batch (normalisation, erasing) after
moving it to the device the model is on (:class:`glsim.data.transforms.Preprocess`).
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, get_worker_info
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from glsim.data.manifest import BOX_COLUMNS
from glsim.data.shards import ShardError, join, location_size, open_location, read_index

SHUFFLE_BUFFER = 1000  # samples held by the streaming shuffle (per worker)
PREFETCH_BATCHES = 4  # batches each worker keeps ready (uint8 batches are small)


def _split_entry(shards_dir: str | Path, split: str) -> dict[str, Any]:
    index = read_index(shards_dir)
    if split not in index["splits"]:
        raise ShardError(
            f"{join(shards_dir, 'index.json')} has no split {split!r} (has {sorted(index['splits'])})"
        )
    return index["splits"][split]


def dataset_length(shards_dir: str | Path, split: str) -> int:
    """Number of samples in a split, from ``index.json``."""
    return int(_split_entry(shards_dir, split)["count"])


def epoch_shards(
    shards_dir: str | Path, split: str, *, shuffle: bool, seed: int, epoch: int
) -> list[dict[str, Any]]:
    """The split's index entries in the order an epoch reads them (before worker splitting).

    Shards are shuffled once, before they are dealt to workers, so the (seed, epoch) ->
    shard order map does not depend on the worker count (nor on the ranks of a torchrun
    run: every rank computes the same order).
    """
    shards = list(_split_entry(shards_dir, split)["shards"])
    if shuffle:
        random.Random(_seed_for(seed, epoch, _SHARD_ORDER)).shuffle(shards)
    return shards


def rank_count(count: int, rank: int, world_size: int) -> int:
    """Samples of a stream of ``count`` that rank ``rank`` keeps (every ``world_size``-th)."""
    return len(range(rank, count, world_size))


def num_batches(
    shards_dir: str | Path,
    split: str,
    *,
    batch_size: int,
    workers: int,
    drop_last: bool,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> int:
    """Exactly how many batches :func:`make_loader` yields with the same arguments.

    Each DataLoader worker batches its own shards (``shards[w::workers]``), so with
    ``workers > 1`` this can exceed ``ceil(count / batch_size)`` by up to one partial
    batch per worker. Under torchrun (``world_size > 1``) the count is ``rank``'s; ranks
    can differ by one batch per worker (the training loop steps every rank the minimum).
    """
    shards = epoch_shards(shards_dir, split, shuffle=shuffle, seed=seed, epoch=epoch)
    workers = max(1, min(workers, len(shards)))
    counts = [
        rank_count(sum(s["count"] for s in shards[w::workers]), rank, world_size)
        for w in range(workers)
    ]
    per_worker = (c // batch_size if drop_last else -(-c // batch_size) for c in counts)
    return sum(per_worker)


def open_shards(
    sources: Iterable[dict[str, Any]], expected: dict[str, dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """Yield the files of each shard (webdataset's ``{"fname", "data", "__url__"}`` dicts).

    Each shard is checked against its ``index.json`` entry (``expected[url]``) before and
    after reading: its size (a copy cut at a member boundary reads as a valid, shorter tar)
    and its sample count (``tarfile`` silently ends a stream at a garbage header). Any
    error while reading is re-raised as :class:`ShardError` naming the shard file. Files
    are closed as soon as their shard is read.
    """
    hint = "re-run the shards stage (or `dvc checkout`) to restore it"
    for source in sources:
        url = source["url"]
        entry = expected[url]
        try:
            size = location_size(url)
        except FileNotFoundError:
            raise ShardError(f"shard missing: {url}; {hint}") from None
        if size != entry["bytes"]:
            raise ShardError(
                f"shard {url} is {size} bytes but index.json says {entry['bytes']}: truncated or "
                f"overwritten; {hint}"
            )
        keys = 0
        last_key = None
        with open_location(url, "rb") as stream:
            try:
                for file in tar_file_iterator(stream):
                    key, _ = base_plus_ext(file["fname"])
                    if key != last_key:
                        keys, last_key = keys + 1, key
                    yield {**file, "__url__": url}
            except Exception as err:
                raise ShardError(
                    f"cannot read shard {url}: {err.args[0] if err.args else err!r}; {hint}"
                ) from err
        if keys != entry["count"]:
            raise ShardError(
                f"cannot read shard {url}: it holds {keys} samples but index.json says {entry['count']}: "
                f"corrupt; {hint}"
            )
        yield {}  # end-of-shard marker: group_by_keys never joins samples across shards


_BUFFER_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def image_problem(err: BaseException) -> str:
    """Why PIL could not read an image, in words: never the repr of the buffer it read."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image format PIL recognises"
    return _BUFFER_REPR.sub("", str(err)).strip() or type(err).__name__


def source_file(path: str, images_root: str | Path | None) -> str:
    """The image file a sample came from: its manifest ``path`` (relative to the manifest's
    folder, ``images_root``) made whole, as the user named it (``/data/birds/x.jpg``, not
    ``../../../../birds/x.jpg``)."""
    if images_root is None:
        return path
    return os.path.normpath(Path(images_root).absolute() / path)


def decode_image(data: bytes, key: str = "?", *, name: str | None = None) -> np.ndarray:
    """Image bytes -> RGB uint8 array (H, W, 3); errors name the image file (``name``; the
    sample key when not known)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as err:
        what = f"image {name} (sample {key!r})" if name else f"sample {key!r}: image"
        raise ShardError(
            f"{what} does not decode ({image_problem(err)}); replace or remove it, then prepare "
            "and shard the dataset again (the validate stage lists every bad image)"
        ) from err


def image_member(sample: dict[str, Any]) -> bytes:
    """The image bytes of a sample: its one member besides ``cls`` and ``json``."""
    members = [k for k in sample if not k.startswith("__") and k not in ("cls", "json")]
    if len(members) != 1:
        raise ShardError(
            f"sample {sample['__key__']!r} in {sample.get('__url__')} should have one image member "
            f"besides cls/json, has {sorted(members)}; re-run the shards stage"
        )
    return sample[members[0]]


class SampleTransform(Protocol):
    """What the loader needs of a :class:`glsim.data.transforms.Preprocess` (named here
    rather than imported: the stages that only read shards do not run the transforms)."""

    finish: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def sample(self, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]: ...

    def set_random_seed(self, seed: int | None) -> None: ...


_SHARD_ORDER, _SAMPLE_ORDER, _AUGMENT = 0, 1, 2  # independent random streams of an epoch
MAX_WORKERS = 1024  # DataLoader workers per rank, for the global worker number of a stream


def _worker_number(rank: int) -> int:
    info = get_worker_info()
    return rank * MAX_WORKERS + (info.id if info else 0)


def _seed_for(seed: int, epoch: int, stream: int, worker: int = 0) -> int:
    # ``worker`` is global over the ranks (``rank * MAX_WORKERS + DataLoader worker id``), so
    # rank 0 of a torchrun run draws what a single process draws
    # SeedSequence mixes the ints so nearby (seed, epoch, worker) give unrelated streams.
    return int(np.random.SeedSequence([seed, epoch, stream, worker]).generate_state(1)[0])


class _ToTensors:
    """Decode, transform and pack one sample as ``(uint8 image, erase box, label[, meta])``;
    reseeds the transform once per worker."""

    def __init__(
        self,
        transform: SampleTransform,
        seed: int,
        epoch: int,
        with_meta: bool,
        rank: int = 0,
        images_root: str | Path | None = None,
    ):
        self.transform = transform
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.with_meta = with_meta
        self.images_root = images_root

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[tuple]:
        self.transform.set_random_seed(
            _seed_for(self.seed, self.epoch, _AUGMENT, _worker_number(self.rank))
        )
        for sample in samples:
            key = sample["__key__"]
            extra = json.loads(sample["json"]) if "json" in sample else {}
            path = extra.get("path")  # a decode error names the user's file, not the key
            name = source_file(path, self.images_root) if path else None
            pixels = decode_image(image_member(sample), key, name=name)  # (H, W, 3)
            image, erase_box = self.transform.sample(pixels)
            label = torch.tensor(int(sample["cls"]), dtype=torch.int64)
            if not self.with_meta:
                yield image, erase_box, label
                continue
            height, width = pixels.shape[:2]
            meta: dict[str, Any] = {"key": key, "size": torch.tensor([width, height])}
            if all(extra.get(c) is not None for c in BOX_COLUMNS):
                meta["box"] = torch.tensor(
                    [float(extra[c]) for c in BOX_COLUMNS], dtype=torch.float32
                )
            yield image, erase_box, label, meta


def make_dataset(
    shards_dir: str | Path,
    split: str,
    *,
    transform: SampleTransform,
    shuffle: bool,
    seed: int,
    epoch: int,
    with_meta: bool = False,
    shuffle_buffer: int = SHUFFLE_BUFFER,
    rank: int = 0,
    world_size: int = 1,
    images_root: str | Path | None = None,
) -> wds.DataPipeline:
    """The per-sample WebDataset pipeline behind :func:`make_loader` (an IterableDataset)."""
    shards = epoch_shards(shards_dir, split, shuffle=shuffle, seed=seed, epoch=epoch)
    expected = {join(shards_dir, s["name"]): s for s in shards}
    urls = list(expected)
    if not urls:
        raise ShardError(
            f"{shards_dir}: the {split!r} split has no images, so nothing can be "
            f"{'trained' if split == 'train' else 'scored'} on it; check the dataset's "
            "manifest and re-run the shard stage"
        )
    stages: list[Any] = [
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        functools.partial(open_shards, expected=expected),
        group_by_keys,
    ]
    if world_size > 1:
        stages.append(_RankShare(rank, world_size))
    if shuffle:
        stages.append(_SampleShuffle(shuffle_buffer, seed, epoch, rank))
    stages.append(_ToTensors(transform, seed, epoch, with_meta, rank, images_root))
    return wds.DataPipeline(*stages)


class _RankShare:
    """Rank ``rank``'s share of a torchrun run: every ``world_size``-th sample of the
    worker's stream, taken before the (per-rank) shuffle.

    Every rank reads the same shards in the same (seed, epoch) order, so the shares are
    disjoint and together the whole split, every epoch, whatever the shard count (a
    fine-grained dataset is often one shard). The price is that each rank reads, though
    does not decode, every shard: like ``DistributedSampler``, not like webdataset's
    ``split_by_node``, which needs at least one shard per rank and worker.
    """

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for i, sample in enumerate(samples):
            if i % self.world_size == self.rank:
                yield sample


class _SampleShuffle:
    """webdataset's buffered shuffle, seeded per (seed, epoch, worker)."""

    def __init__(self, bufsize: int, seed: int, epoch: int, rank: int = 0):
        self.bufsize, self.seed, self.epoch, self.rank = bufsize, seed, epoch, rank

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        rng = random.Random(
            _seed_for(self.seed, self.epoch, _SAMPLE_ORDER, _worker_number(self.rank))
        )
        return wds.shuffle(self.bufsize, initial=self.bufsize, rng=rng)(samples)


class Batches:
    """A :func:`make_loader` epoch: the DataLoader's uint8 batches, finished on ``device``.

    Each batch is moved as uint8 (``non_blocking``, from pinned memory under CUDA), then
    normalised and erased there by ``finish`` (:class:`glsim.data.transforms.BatchFinish`);
    labels and meta stay on the CPU.
    """

    def __init__(
        self,
        loader: DataLoader,
        finish: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        device: torch.device | str = "cpu",
    ):
        self.loader, self.finish, self.device = loader, finish, torch.device(device)

    def __iter__(self) -> Iterator[tuple]:
        for images, erase_boxes, *rest in self.loader:
            images = images.to(self.device, non_blocking=True)
            erase_boxes = erase_boxes.to(self.device, non_blocking=True)
            yield (self.finish(images, erase_boxes), *rest)


def make_loader(
    shards_dir: str | Path,
    split: str,
    *,
    transform: SampleTransform,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    workers: int,
    drop_last: bool = False,
    with_meta: bool = False,
    rank: int = 0,
    world_size: int = 1,
    images_root: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> Batches:
    """Batches ``(images, labels)`` (or ``(images, labels, meta)``) from a split's shards.

    ``images`` is float32 (B, 3, S, S) on ``device``, as ``transform`` makes it (its
    worker part in the DataLoader workers, its finish per batch on ``device``),
    ``labels`` int64 (B,) on the CPU. With ``with_meta``, ``meta`` is ``{"key": list[str], "size":
    int64 (B, 2), "box": float32 (B, 4)}``: ``size`` the original (width, height), ``box``
    the object box ``x0,y0,x1,y1`` in original pixels (only when the manifest has it);
    :func:`glsim.data.transforms.eval_box_transform` maps it to model-input pixels. The stream is a function of (seed, epoch) only: shard order, the
    shuffle buffer and the augmentations are seeded from them (per worker when
    ``workers > 0``), so a resumed run sees the batches an uninterrupted one would. With
    ``workers > 0`` each worker batches its own shards, so ``drop_last`` drops up to one
    partial batch per worker; without it an epoch yields exactly ``dataset_length`` samples.
    :func:`num_batches` gives the exact batch count. ``transform`` is reseeded (its
    ``set_random_seed``) at the start of every pass, in each worker.

    Args:
        shards_dir: Folder written by :func:`glsim.data.shards.write_shards`.
        split: ``train`` or ``test``.
        transform: A :class:`~glsim.data.transforms.Preprocess` (see
            :func:`~glsim.data.transforms.build_transforms`).
        batch_size: Samples per batch.
        shuffle: Shuffle shards and samples (training); False reads in index order.
        seed: Run seed.
        epoch: Epoch number; a new epoch gives a new order and new augmentations.
        workers: DataLoader worker processes (0: load in this process); capped at the shard count.
        drop_last: Drop the last partial batch.
        with_meta: Also yield keys and boxes.
        rank, world_size: this process's share under torchrun (every ``world_size``-th
            sample, see ``_RankShare``); its shuffle and augmentation streams are its own.
        images_root: the manifest's folder: an image that does not decode is named by its
            file there (the user's own path), not by its shard key.
        device: Where batches are normalised and erased: the model's device.

    ``persistent_workers`` stays off: a loader is built per epoch (its (seed, epoch) streams
    are fixed when it is built), so workers kept alive would never serve another epoch.
    With workers, this process runs OpenCV on one thread from here on, and the workers it
    forks inherit that: otherwise each worker starts a pool of one thread per core (N
    workers, N x cores threads). It is set here, not in the workers, because
    ``cv2.setNumThreads`` in a forked worker deadlocks once this process has used OpenCV's
    pool.
    """
    dataset = make_dataset(
        shards_dir,
        split,
        transform=transform,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        with_meta=with_meta,
        rank=rank,
        world_size=world_size,
        images_root=images_root,
    )
    workers = min(workers, len(_split_entry(shards_dir, split)["shards"]))
    if workers > 0:
        cv2.setNumThreads(1)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=False,
        prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
    )
    return Batches(loader, transform.finish, device)
