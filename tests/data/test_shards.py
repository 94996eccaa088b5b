"""Shards: determinism, size bounds, index contents, streaming, atomic writes."""

from __future__ import annotations

import json
import tarfile
import tracemalloc
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tiny import write_image_dataset

from glsim.data import shards as shards_mod
from glsim.data.manifest import write_manifest
from glsim.data.shards import ShardError, read_index, read_samples, sample_key, write_shards

write_tiny_dataset = partial(write_image_dataset, name="img.{i:03d}.png")


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "raw")


def test_shards_are_byte_identical_across_runs_and_worker_counts(
    manifest: Path, tmp_path: Path
) -> None:
    a = write_shards(manifest, tmp_path / "a", max_count=5, max_bytes=1 << 20, workers=1)
    b = write_shards(manifest, tmp_path / "b", max_count=5, max_bytes=1 << 20, workers=2)
    assert a == b
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_index_layout_and_sample_members(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    index = write_shards(manifest, out, max_count=5, max_bytes=1 << 20)
    assert index == read_index(out)
    assert index["num_classes"] == 3
    assert index["splits"]["train"]["count"] == 12 and index["splits"]["test"]["count"] == 6
    assert [s["count"] for s in index["splits"]["train"]["shards"]] == [5, 5, 2]
    assert [s["name"] for s in index["splits"]["test"]["shards"]] == [
        "test-000000.tar",
        "test-000001.tar",
    ]
    assert json.loads((out / "classes.json").read_text()) == ["c0", "c1", "c2"]

    samples = read_samples(out)
    assert len(samples) == 18 and samples["key"].is_unique
    row = samples[samples["path"] == "images/class_1/img.002.png"].iloc[0]
    assert row["key"] == "images/class_1/img_002"
    image_bytes = (manifest.parent / row["path"]).read_bytes()
    assert row["bytes"] == len(image_bytes)

    with tarfile.open(out / row["shard"]) as tar:
        member = tar.getmember(f"{row['key']}.png")
        assert tar.extractfile(member).read() == image_bytes  # stored as is, extension kept
        assert tar.extractfile(f"{row['key']}.cls").read() == b"1"
        meta = json.loads(tar.extractfile(f"{row['key']}.json").read())
        assert meta == {"path": row["path"], "x0": 2, "y0": 3, "x1": 20, "y1": 21}
        assert {(m.mtime, m.uid, m.gid, m.uname) for m in tar.getmembers()} == {(0, 0, 0, "glsim")}


def test_shards_respect_the_byte_bound(manifest: Path, tmp_path: Path) -> None:
    max_bytes = 2 * tarfile.RECORDSIZE
    index = write_shards(manifest, tmp_path / "s", max_count=1000, max_bytes=max_bytes)
    for split in ("train", "test"):
        shards = index["splits"][split]["shards"]
        assert len(shards) > 1
        for shard in shards:
            size = (tmp_path / "s" / shard["name"]).stat().st_size
            assert size == shard["bytes"] <= max_bytes


def test_long_paths_are_stored_and_stay_within_the_bound(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    rows = []
    for i in range(6):
        path = f"{'deep/' * 40}{'long_name_' * 20}{i}.png"  # a 400-character member name
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 24), (i, 0, 0)).save(root / path)
        rows.append(dict(path=path, label=0, split="train", class_name="c"))
    manifest = write_manifest(pd.DataFrame(rows), root / "manifest.csv")
    max_bytes = 2 * tarfile.RECORDSIZE
    index = write_shards(manifest, tmp_path / "s", max_count=100, max_bytes=max_bytes)
    assert all(s["bytes"] <= max_bytes for s in index["splits"]["train"]["shards"])
    samples = read_samples(tmp_path / "s")
    with tarfile.open(tmp_path / "s" / samples["shard"][0]) as tar:
        assert (
            tar.extractfile(f"{samples['key'][0]}.png").read()
            == (root / samples["path"][0]).read_bytes()
        )


def test_an_image_larger_than_the_bound_gets_its_own_shard(manifest: Path, tmp_path: Path) -> None:
    index = write_shards(manifest, tmp_path / "s", max_count=1000, max_bytes=1024)
    assert all(s["count"] == 1 for s in index["splits"]["train"]["shards"])


def test_stale_shards_and_temp_files_are_removed(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    write_shards(manifest, out, max_count=1, max_bytes=1 << 20)
    (out / ".train-000000.tar.abc.tmp").write_bytes(b"half a shard")
    write_shards(manifest, out, max_count=100, max_bytes=1 << 20)
    assert sorted(p.name for p in out.glob("*.tar")) == ["test-000000.tar", "train-000000.tar"]
    assert not list(out.glob(".*"))


def test_interrupted_write_leaves_no_shard_under_its_final_name(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Path.read_bytes
    calls = {"n": 0}

    def failing_read(self: Path) -> bytes:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", failing_read)
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        write_shards(manifest, out, max_count=100, max_bytes=1 << 20)
    assert not out.exists()  # made by this run, so removed with what it held


def test_shard_writing_streams_one_image_at_a_time(tmp_path: Path) -> None:
    """Peak memory while sharding 15 MB of images stays far below the images' total size."""
    root = tmp_path / "raw"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(300):
        path = f"img/{i:04d}.jpg"  # sharding never decodes, so random bytes do
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(rng.bytes(50_000))
        rows.append(
            dict(
                path=path, label=i % 2, split="train" if i < 200 else "test", class_name=f"c{i % 2}"
            )
        )
    manifest = write_manifest(pd.DataFrame(rows), root / "manifest.csv")

    tracemalloc.start()
    try:
        write_shards(manifest, tmp_path / "s", max_count=20, max_bytes=1 << 30, workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 300 * 50_000 / 4

    # The plan handed to each writer carries paths and sizes, never image bytes.
    plan = shards_mod.plan_shards(
        shards_mod._specs(pd.read_csv(manifest), root), "train", max_count=20, max_bytes=1 << 30
    )
    assert all(isinstance(s.source, str) and s.size == 50_000 for p in plan for s in p.samples)


def test_missing_image_names_the_file(manifest: Path, tmp_path: Path) -> None:
    (manifest.parent / "images/class_0/img.001.png").unlink()
    with pytest.raises(ShardError, match=r"img\.001\.png"):
        write_shards(manifest, tmp_path / "s", max_count=5, max_bytes=1 << 20)


def test_paths_that_collide_as_keys_are_rejected(tmp_path: Path) -> None:
    assert sample_key("a/b.c.png") == "a/b_c"
    root = tmp_path / "raw"
    root.mkdir()
    for name in ("x.y.png", "x_y.png"):
        Image.new("RGB", (24, 24)).save(root / name)
    rows = [dict(path=p, label=0, split="train", class_name="c") for p in ("x.y.png", "x_y.png")]
    manifest = write_manifest(pd.DataFrame(rows), root / "manifest.csv")
    with pytest.raises(ShardError, match="same shard key"):
        write_shards(manifest, tmp_path / "s", max_count=5, max_bytes=1 << 20)


def test_a_full_disk_names_the_shard_and_leaves_no_half_made_folder(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import errno
    import os

    import webdataset as wds

    from glsim.errors import guarded

    write = wds.TarWriter.write
    calls = {"n": 0}

    def fills_up(self, obj):  # the disk is full after the first sample
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(self, obj)

    out = tmp_path / "shards"
    monkeypatch.setattr(wds.TarWriter, "write", fills_up)
    run = partial(write_shards, manifest, out, max_count=5, max_bytes=1 << 20)
    assert guarded(run, debug=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out / 'train-000000.tar'}: No space left on device" in err[0]
    assert not out.exists()

    # over an earlier complete folder: no shard, table or index of either run is left
    monkeypatch.setattr(wds.TarWriter, "write", write)
    run()
    calls["n"] = 0
    monkeypatch.setattr(wds.TarWriter, "write", fills_up)
    assert guarded(run, debug=False) == 2
    assert sorted(p.name for p in out.iterdir()) == []
    monkeypatch.setattr(wds.TarWriter, "write", write)
    assert run() == read_index(out)
