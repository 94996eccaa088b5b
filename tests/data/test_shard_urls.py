"""Shards read from an fsspec URL (``data.shards_url``): a real HTTP server on 127.0.0.1 and
fsspec's in-memory filesystem stand in for an object store. A run trained from the URL is
bit-identical to one trained from the local folder, and a missing or truncated remote
shard is one named error."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import fsspec
import pytest
import torch
from tiny import tiny_params

from glsim import runs
from glsim.data.loader import make_loader
from glsim.data.shards import ShardError, read_index
from glsim.data.transforms import build_transforms
from glsim.protocol.data import prepare, shard
from glsim.protocol.evaluate import evaluate_run
from glsim.runs import RunSpec
from glsim.train.run import train_run


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("urls")
    params = tiny_params(
        root, data={"shard_max_count": 5, "shard_max_bytes": 1 << 20},
        protocol={"models": ["vit", "glsim"], "seeds": [1], "lr_grid": []},
    )  # fmt: skip
    prepare(params)
    shard(params)
    return params


@pytest.fixture
def http_root(tmp_path):
    """A plain ``http.server`` (no range requests) serving ``tmp_path/served`` on loopback."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def with_url(params, url: str, runs_dir: Path):
    p = params.model_copy(deep=True)
    p.data.shards_url = url
    p.base.runs_dir = runs_dir
    return p


def test_a_run_trained_from_an_http_url_equals_one_trained_from_the_folder(
    sharded, http_root, tmp_path
):
    served, url = http_root
    shutil.copytree(sharded.data.shards_dir, served, dirs_exist_ok=True)
    remote = with_url(sharded, url, tmp_path / "runs-remote")
    local = with_url(sharded, None, tmp_path / "runs-local")
    assert runs.shard_source(remote) == f"{url}/synthetic_fg"
    assert runs.shard_source(remote, "lrsearch") == f"{url}/synthetic_fg/lrsearch"
    assert runs.shard_source(local) == str(runs.shards_dir(local))

    spec = RunSpec("vit", 1)
    a = torch.load(train_run(remote, spec, track=False) / "last.pt", weights_only=False)
    b = torch.load(train_run(local, spec, track=False) / "last.pt", weights_only=False)
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

    def curve(ckpt):  # the per-epoch metrics but wall time
        return [{k: v for k, v in h.items() if k != "train/epoch_seconds"} for h in ckpt["state"]["history"]]

    assert curve(a) == curve(b) and len(curve(a)) == remote.train.epochs
    remote_eval = evaluate_run(remote, spec, track=False)
    local_eval = evaluate_run(local, spec, track=False)
    assert remote_eval["top1"] == local_eval["top1"] and remote_eval["count"] == local_eval["count"]


def test_memory_filesystem_reads_the_same_samples(sharded):
    src = runs.shards_dir(sharded)
    fs = fsspec.filesystem("memory")
    for path in src.iterdir():
        if path.is_file():
            fs.pipe(f"/glsim-shards/synthetic_fg/{path.name}", path.read_bytes())
    url = "memory://glsim-shards/synthetic_fg"
    assert read_index(url) == read_index(src)
    transform = build_transforms(image_size=32, resize_ratio=1.0, train=False)

    def keys(where):
        loader = make_loader(where, "test", transform=transform, batch_size=4, shuffle=False,
                             seed=0, epoch=0, workers=0, with_meta=True)  # fmt: skip
        return [k for _, _, meta in loader for k in meta["key"]]

    assert keys(url) == keys(src) and keys(url)


def test_a_missing_index_or_a_truncated_shard_at_the_url_is_named(sharded, http_root):
    served, url = http_root
    with pytest.raises(ShardError, match=r"shard index not found: http://.*/synthetic_fg/index.json; copy the shards there"):
        read_index(f"{url}/synthetic_fg")
    shutil.copytree(sharded.data.shards_dir, served, dirs_exist_ok=True)
    index = read_index(f"{url}/synthetic_fg")
    first = index["splits"]["test"]["shards"][0]["name"]
    target = served / "synthetic_fg" / first
    target.write_bytes(target.read_bytes()[:-1024])
    transform = build_transforms(image_size=32, resize_ratio=1.0, train=False)
    loader = make_loader(f"{url}/synthetic_fg", "test", transform=transform, batch_size=4,
                         shuffle=False, seed=0, epoch=0, workers=0)  # fmt: skip
    with pytest.raises(ShardError, match=rf"shard {url}/synthetic_fg/{first} is \d+ bytes but index.json says"):
        list(loader)
