"""Manifest -> WebDataset tar shards, one set per split.

Layout of ``out_dir`` after :func:`write_shards`:

- ``{split}-{i:06d}.tar``: WebDataset shards. Each sample is three members sharing a key:
  ``{key}.{ext}`` (the image bytes exactly as stored, original extension), ``{key}.cls``
  (the label as ASCII digits) and ``{key}.json`` (``{"path": ..., **extra columns}``, e.g.
  the object box ``x0,y0,x1,y1``). The key is the manifest path without its extension, with
  characters outside ``[A-Za-z0-9_/-]`` replaced by ``_`` (WebDataset splits a member name
  at the first dot of its last component, so the key must have none).
- ``classes.json``: class names indexed by label 0..C-1 (every label has a train image).
- ``samples.csv``: one row per sample, ``key,path,split,label,shard,bytes,sha256``; the
  sha256 of each image's bytes is what the validation suite checks train/test overlap with.
- ``index.json``: ``{"format", "manifest_sha256", "num_classes", "max_count", "max_bytes",
  "samples": "samples.csv", "classes": "classes.json", "splits": {split: {"count",
  "bytes", "shards": [{"name", "count", "bytes", "sha256"}]}}}``; ``bytes`` of a shard is
  the tar file's size, ``sha256`` the tar file's hash.

Rows are written in a fixed pseudo-random order per split (seeded permutation of the
manifest rows), so a shard holds a mix of classes and a streaming shuffle buffer sees
every class early. Shard boundaries are planned up front from file sizes, so each shard is
written independently (one process per group of shards), holds at most ``max_count``
samples and at most ``max_bytes`` bytes (a single image larger than ``max_bytes`` gets a
shard of its own), and is byte-identical across runs (fixed order, mtime, owner, mode).

We write with :class:`webdataset.TarWriter`, not :class:`webdataset.ShardWriter`:
``ShardWriter`` discovers boundaries while writing one stream (no parallelism), only
checks ``maxsize`` *before* a write (so shards overshoot it) and writes final names
directly; with boundaries known beforehand each shard is one ``TarWriter`` on a temp file
renamed into place (:func:`glsim.utils._atomic`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import tarfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import webdataset as wds

from glsim.data.manifest import REQUIRED_COLUMNS, SPLITS, class_names, read_manifest
from glsim.data.registry import read_image_roots
from glsim.progress import progress
from glsim.utils import _atomic, atomic_write_json, atomic_write_text

INDEX_NAME = "index.json"
CLASSES_NAME = "classes.json"
SAMPLES_NAME = "samples.csv"
INDEX_FORMAT = 1
ORDER_SEED = 0  # fixed: the row order inside shards is part of the shards' identity

_BLOCK = tarfile.BLOCKSIZE  # 512
_RECORD = tarfile.RECORDSIZE  # 10240: a closed tar stream is padded to a multiple of this
_TAR_OPTIONS = dict(
    encoder=False, user="glsim", group="glsim", mode=0o444, mtime=0, format="PAX_FORMAT"
)
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_/\-]")


class ShardError(ValueError):
    """Shards cannot be written or read; the message names the file and what to do."""


@dataclass(frozen=True)
class SampleSpec:
    """One sample to write: where its image is and the small members that go with it."""

    key: str
    path: str  # as in the manifest, relative to the manifest's folder
    source: str  # absolute path of the image file
    ext: str
    label: int
    meta: bytes  # the json member
    size: int  # image bytes


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: its file name and the samples (paths and sizes, never image bytes)."""

    name: str
    samples: tuple[SampleSpec, ...]


def sample_key(path: str) -> str:
    """The WebDataset key of a manifest path: no extension, no dots, stable across runs."""
    stem = path.rsplit(".", 1)[0] if "." in Path(path).name else path
    return _KEY_UNSAFE.sub("_", stem.strip("/"))


def _member_bytes(size: int, name: str) -> int:
    """Bytes a tar member takes: header, data padded to blocks, a PAX header for long names."""
    encoded = name.encode()
    # PAX_FORMAT adds an extended header (a header block + "NN path=...\n" records) for
    # names that do not fit ustar's 100 bytes or are not ASCII.
    needs_pax = len(encoded) > 100 or not name.isascii()
    pax = _BLOCK + math.ceil((len(encoded) + 16) / _BLOCK) * _BLOCK if needs_pax else 0
    return pax + _BLOCK + math.ceil(size / _BLOCK) * _BLOCK


def _sample_bytes(spec: SampleSpec) -> int:
    members = {spec.ext: spec.size, "cls": len(str(spec.label)), "json": len(spec.meta)}
    return sum(_member_bytes(size, f"{spec.key}.{ext}") for ext, size in members.items())


def _tar_bytes(payload: int) -> int:
    """File size of a closed tar stream whose members take ``payload`` bytes."""
    return math.ceil((payload + 2 * _BLOCK) / _RECORD) * _RECORD


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _specs(
    df: pd.DataFrame, root: Path, image_roots: list[Path] | None = None
) -> Iterator[SampleSpec]:
    extras = [c for c in df.columns if c not in REQUIRED_COLUMNS]
    columns = list(df.columns)
    for values in df.itertuples(index=False, name=None):
        row = dict(zip(columns, values, strict=True))
        source = root / row["path"]
        if image_roots is not None:
            _check_inside(source, row["path"], image_roots)
        try:
            size = source.stat().st_size
        except FileNotFoundError:
            raise ShardError(
                f"image not found: {source} (manifest row path={row['path']!r}); "
                "re-run the dataset preparation or fix the manifest"
            ) from None
        meta = {"path": row["path"], **{c: _json_value(row[c]) for c in extras}}
        yield SampleSpec(
            key=sample_key(row["path"]),
            path=row["path"],
            source=str(source),
            ext=source.suffix.lstrip(".").lower() or "img",
            label=int(row["label"]),
            meta=json.dumps(meta, sort_keys=True).encode(),
            size=size,
        )


def _check_inside(source: Path, path: str, image_roots: list[Path]) -> None:
    """A user dataset's image still lies in the folders it was prepared from (a symlink
    changed since, a hand-edited manifest), so no other file is copied into a shard."""
    target = source.resolve()
    if not any(target.is_relative_to(r) for r in image_roots):
        raise ShardError(
            f"image {source} (manifest row path={path!r}) resolves to {target}, outside the "
            f"dataset's folders {[str(r) for r in image_roots]}; fix the file or link and "
            "prepare the dataset again"
        )


def plan_shards(
    specs: Iterable[SampleSpec], split: str, *, max_count: int, max_bytes: int
) -> list[ShardPlan]:
    """Cut a split's samples into consecutive shards bounded by count and tar file size."""
    plans: list[ShardPlan] = []
    current: list[SampleSpec] = []
    payload = 0
    for spec in specs:
        size = _sample_bytes(spec)
        if current and (len(current) >= max_count or _tar_bytes(payload + size) > max_bytes):
            plans.append(ShardPlan(f"{split}-{len(plans):06d}.tar", tuple(current)))
            current, payload = [], 0
        current.append(spec)
        payload += size
    if current:
        plans.append(ShardPlan(f"{split}-{len(plans):06d}.tar", tuple(current)))
    return plans


def write_shard(plan: ShardPlan, out_dir: str | Path) -> dict[str, Any]:
    """Write one shard atomically, reading one image at a time; return its index entry."""
    records = []

    def write(tmp: Path) -> None:
        tmp.chmod(0o644)  # mkstemp makes 0600; shards are ordinary readable data files
        with open(tmp, "wb") as stream, wds.TarWriter(stream, **_TAR_OPTIONS) as sink:
            for spec in plan.samples:
                data = Path(spec.source).read_bytes()
                sink.write(
                    {
                        "__key__": spec.key,
                        spec.ext: data,
                        "cls": str(spec.label).encode(),
                        "json": spec.meta,
                    }
                )
                records.append((spec.key, len(data), hashlib.sha256(data).hexdigest()))

    path = _atomic(Path(out_dir) / plan.name, write)
    return {
        "name": plan.name,
        "count": len(plan.samples),
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "records": records,
    }


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_unique_keys(df: pd.DataFrame, source: Path) -> None:
    keys = df["path"].map(sample_key)
    clash = keys.duplicated(keep=False)
    if clash.any():
        rows = df.loc[clash, "path"].head(6).tolist()
        raise ShardError(
            f"{source}: these paths map to the same shard key {sorted(set(keys[clash]))[:3]}: {rows}; "
            "paths must stay distinct after dropping the extension and replacing characters "
            "outside [A-Za-z0-9_/-] with '_'; rename the files or fix the manifest"
        )


def _clear_stale(out_dir: Path, keep: set[str]) -> None:
    """Remove shards of an earlier run that this run did not write, and interrupted temp files."""
    for path in out_dir.iterdir():
        stale_shard = re.fullmatch(r"(train|test)-\d{6}\.tar", path.name) and path.name not in keep
        temp = path.name.startswith(".") and path.name.endswith(".tmp")
        if stale_shard or temp:
            path.unlink()


def _write_folder(
    df: pd.DataFrame,
    manifest_path: Path,
    plans: dict[str, list[ShardPlan]],
    out_dir: Path,
    workers: int,
    max_count: int,
    max_bytes: int,
) -> dict[str, Any]:
    """The shards, ``samples.csv``, ``classes.json`` and, last, ``index.json``."""
    flat = [p for split in SPLITS for p in plans[split]]
    if workers > 1 and len(flat) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(flat))) as pool:
            chunk = max(1, len(flat) // (4 * workers))  # groups of consecutive shards per task
            written = pool.map(write_shard, flat, [out_dir] * len(flat), chunksize=chunk)
            entries = list(progress(written, total=len(flat), desc="shard", unit="shard"))
    else:
        entries = [write_shard(p, out_dir) for p in progress(flat, desc="shard", unit="shard")]
    by_name = {e["name"]: e for e in entries}

    sample_rows = []
    index_splits: dict[str, Any] = {}
    for split in SPLITS:
        shards = []
        for plan in plans[split]:
            entry = by_name[plan.name]
            for spec, (key, size, sha) in zip(plan.samples, entry.pop("records"), strict=True):
                sample_rows.append((key, spec.path, split, spec.label, plan.name, size, sha))
            shards.append(entry)
        index_splits[split] = {
            "count": sum(s["count"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
            "shards": shards,
        }

    names = class_names(df)
    labels = sorted(df["label"].unique().tolist())
    classes: list[str | None] = [None] * (max(labels) + 1)
    for label, name in zip(labels, names, strict=True):
        classes[label] = name
    buf = io.StringIO()
    columns = ["key", "path", "split", "label", "shard", "bytes", "sha256"]
    pd.DataFrame(sample_rows, columns=columns).to_csv(buf, index=False)
    atomic_write_text(out_dir / SAMPLES_NAME, buf.getvalue())
    atomic_write_json(out_dir / CLASSES_NAME, classes)

    index = {
        "format": INDEX_FORMAT,
        "manifest_sha256": file_sha256(manifest_path),
        "num_classes": len(classes),  # labels are 0..C-1, all present (check_manifest)
        "max_count": max_count,
        "max_bytes": max_bytes,
        "samples": SAMPLES_NAME,
        "classes": CLASSES_NAME,
        "splits": index_splits,
    }
    atomic_write_json(out_dir / INDEX_NAME, index)
    return index


def _remove_written(out_dir: Path, *, remove_folder: bool) -> None:
    """After a failed write (a full disk): drop the shards, temp files and tables, and the
    folder when this run made it and nothing else is in it, so nothing half-made is left
    and the next run starts over."""
    _clear_stale(out_dir, keep=set())
    for name in (SAMPLES_NAME, CLASSES_NAME, INDEX_NAME):
        (out_dir / name).unlink(missing_ok=True)
    if remove_folder and not any(out_dir.iterdir()):
        out_dir.rmdir()


def write_shards(
    manifest_path: str | Path,
    out_dir: str | Path,
    *,
    max_count: int,
    max_bytes: int,
    workers: int = 1,
) -> dict[str, Any]:
    """Write a manifest's images into per-split WebDataset shards (see the module docstring).

    Args:
        manifest_path: ``manifest.csv``; image paths are relative to its folder.
        out_dir: Folder for the shards, ``index.json``, ``classes.json`` and ``samples.csv``.
        max_count: At most this many samples per shard.
        max_bytes: At most this many bytes per shard file (unless one image alone is larger).
        workers: Processes writing shards in parallel (1: in this process).

    Returns:
        The index written to ``out_dir/index.json``.
    """
    manifest_path = Path(manifest_path)
    out_dir = Path(out_dir)
    if max_count < 1 or max_bytes < 1:
        raise ShardError(f"max_count and max_bytes must be >= 1, got {max_count} and {max_bytes}")
    df = read_manifest(manifest_path)
    _check_unique_keys(df, manifest_path)
    root = manifest_path.parent
    image_roots = read_image_roots(root)

    plans: dict[str, list[ShardPlan]] = {}
    for split in SPLITS:
        rows = df[df["split"] == split]
        order = np.random.default_rng(ORDER_SEED).permutation(len(rows))
        specs = _specs(rows.iloc[order], root, image_roots)
        plans[split] = plan_shards(specs, split, max_count=max_count, max_bytes=max_bytes)
    flat = [p for split in SPLITS for p in plans[split]]

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    # the index is written last: while shards are rewritten there is none, so a folder
    # left by a failed or killed run is never read as complete
    (out_dir / INDEX_NAME).unlink(missing_ok=True)
    _clear_stale(out_dir, keep={p.name for p in flat})
    try:
        return _write_folder(df, manifest_path, plans, out_dir, workers, max_count, max_bytes)
    except BaseException:
        _remove_written(out_dir, remove_folder=created)
        raise


def is_url(location: str | Path) -> bool:
    """Whether a shard location is an fsspec URL (``s3://``, ``http://``, ``memory://``...)."""
    return "://" in str(location)


def join(location: str | Path, name: str) -> str:
    """``location/name`` for a folder or a URL (the string the loader opens)."""
    return f"{str(location).rstrip('/')}/{name}" if is_url(location) else str(Path(location) / name)


def open_location(location: str, mode: str = "rb"):
    """Open a shard file or index: a local path with ``open``, a URL with fsspec."""
    if not is_url(location):
        return open(location, mode)
    import fsspec

    # http(s): a stream (block_size 0), as a tar is read front to back; plain http.server
    # and many CDNs answer no range requests
    streaming = {"block_size": 0} if location.startswith(("http://", "https://")) else {}
    return fsspec.open(location, mode, **streaming).open()


def location_size(location: str) -> int:
    """Bytes of a shard file (``FileNotFoundError`` when it is not there)."""
    if not is_url(location):
        return Path(location).stat().st_size
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    return int(fs.size(path))


def read_index(shards_dir: str | Path) -> dict[str, Any]:
    """Read ``index.json`` (of a folder or an fsspec URL, ``data.shards_url``); a missing
    or unreadable index names the file and the fix."""
    path = join(shards_dir, INDEX_NAME)
    try:
        with open_location(path, "rb") as f:
            index = json.loads(f.read().decode())
    except FileNotFoundError:
        where = (
            "copy the shards there (e.g. `aws s3 sync data/shards <data.shards_url>`) or unset "
            "data.shards_url"
            if is_url(shards_dir)
            else "run the shard stage for this dataset first (dvc repro, or pipelines/shard.py "
            "--dataset NAME)"
        )
        raise ShardError(f"shard index not found: {path}; {where}") from None
    except json.JSONDecodeError as err:
        raise ShardError(f"{path}: not valid JSON ({err}); re-run the shards stage") from None
    if index.get("format") != INDEX_FORMAT:
        raise ShardError(
            f"{path}: index format {index.get('format')!r}, this code reads {INDEX_FORMAT}; re-run the shards stage"
        )
    return index


def read_class_names(shards_dir: str | Path, count: int) -> list[str]:
    """The ``count`` class names of ``classes.json``; ``class <i>`` for every class when it
    is missing, unreadable or of another length (a run whose shards have moved)."""
    names: list[str] = []
    try:
        with open_location(join(shards_dir, CLASSES_NAME), "rb") as f:
            data = json.loads(f.read().decode())
        if isinstance(data, dict):
            data = [data[k] for k in sorted(data, key=lambda k: int(k))]
        names = [str(n) for n in data]
    except (OSError, ValueError, TypeError, KeyError):
        names = []
    if len(names) != count:
        names = [f"class {i}" for i in range(count)]
    return names


def read_samples(shards_dir: str | Path) -> pd.DataFrame:
    """The per-sample table ``samples.csv`` (key, path, split, label, shard, bytes, sha256)."""
    path = Path(shards_dir) / SAMPLES_NAME
    if not path.is_file():
        raise ShardError(f"{path} not found; run the shard stage for this dataset first")
    return pd.read_csv(
        path, dtype={"key": str, "path": str, "split": str, "shard": str, "sha256": str}
    )
