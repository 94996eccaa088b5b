"""Data pipeline throughput: sharding and the training loader, side by side in one run.

Generates the built-in fine-grained dataset (PNG, :func:`glsim.data.synthetic.generate_fine_grained`)
in a temp dir plus a JPEG copy (PIL re-encode), then measures, interleaved over repeats:

- sharding: :func:`glsim.data.shards.write_shards` images/s for PNG and JPEG sources with
  ``workers=1`` and ``workers=2`` (fresh output folder each time), ratio workers 2 / 1;
- loading, on the JPEG train split: :func:`glsim.data.loader.make_loader` with the training
  transforms (``build_transforms(train=True, augreg="strong")``) versus a plain loop that
  decodes the same JPEG files with PIL and converts them to a float tensor, and versus the
  same plain loop followed by the same transforms (so decode, augmentation and
  shard/DataLoader overhead can be told apart). Ratios are against the plain loop.

Medians over repeats; ratios are medians of the paired per-repeat ratios.

    .venv/bin/python benchmarks/data_throughput.py                     # defaults
    .venv/bin/python benchmarks/data_throughput.py --classes 4 --per-class 8 --repeats 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from glsim.config import SyntheticParams
from glsim.data.loader import make_loader
from glsim.data.shards import write_shards
from glsim.data.synthetic import generate_fine_grained
from glsim.data.transforms import build_transforms


def make_jpeg_copy(png_manifest: Path, out_root: Path, quality: int) -> Path:
    """Re-encode every image of a manifest as JPEG under ``out_root``; returns the new manifest."""
    df = pd.read_csv(png_manifest)
    new_paths = []
    for rel in df["path"]:
        jpg = Path(rel).with_suffix(".jpg")
        (out_root / jpg).parent.mkdir(parents=True, exist_ok=True)
        with Image.open(png_manifest.parent / rel) as img:
            img.convert("RGB").save(out_root / jpg, quality=quality)
        new_paths.append(jpg.as_posix())
    df["path"] = new_paths
    out = out_root / "manifest.csv"
    df.to_csv(out, index=False)
    return out


def timed(fn: Callable[[], int]) -> float:
    """Items per second of one call of ``fn`` (which returns how many items it handled)."""
    start = time.perf_counter()
    items = fn()
    return items / (time.perf_counter() - start)


def shard_once(manifest: Path, out: Path, args: argparse.Namespace, workers: int) -> int:
    shutil.rmtree(out, ignore_errors=True)
    index = write_shards(
        manifest,
        out,
        max_count=args.shard_max_count,
        max_bytes=args.shard_max_bytes,
        workers=workers,
    )
    return sum(s["count"] for s in index["splits"].values())


def loader_once(shards: Path, args: argparse.Namespace, epoch: int) -> int:
    transform = build_transforms(image_size=args.image_size, train=True, augreg="strong")
    loader = make_loader(
        shards, "train", transform=transform, batch_size=args.batch_size,
        shuffle=True, seed=0, epoch=epoch, workers=args.loader_workers,
    )  # fmt: skip
    return sum(images.shape[0] for images, _ in loader)


def pil_to_tensor(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        pixels = np.array(img.convert("RGB"))  # (H, W, 3) uint8, writable copy
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)  # (3, H, W)


def plain_once(files: list[Path]) -> int:
    for path in files:
        pil_to_tensor(path)
    return len(files)


def plain_transformed_once(files: list[Path], args: argparse.Namespace, epoch: int) -> int:
    transform = build_transforms(
        image_size=args.image_size, train=True, augreg="strong", seed=epoch
    )
    for path in files:
        with Image.open(path) as img:
            transform(image=np.asarray(img.convert("RGB")))["image"]
    return len(files)


def median_ratio(base: list[float], other: list[float]) -> float:
    return statistics.median(o / b for b, o in zip(base, other, strict=True))


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    synthetic = SyntheticParams(
        num_classes=args.classes, train_per_class=args.per_class, test_per_class=args.test_per_class,
        canvas_size=args.canvas_size,
    )  # fmt: skip
    t0 = time.perf_counter()
    manifests = {"png": generate_fine_grained(tmp / "png", synthetic)}
    manifests["jpeg"] = make_jpeg_copy(manifests["png"], tmp / "jpeg", args.jpeg_quality)
    num_images = len(pd.read_csv(manifests["png"]))
    print(
        f"generated {num_images} images ({args.canvas_size}px) in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )

    shard_cases = [(fmt, w) for fmt in manifests for w in args.shard_workers]
    shard_rates: dict[str, list[float]] = {f"{fmt}/workers={w}": [] for fmt, w in shard_cases}
    load_rates: dict[str, list[float]] = {
        "plain PIL -> tensor": [],
        "plain PIL + train transforms": [],
        "make_loader (shards)": [],
    }
    jpeg_shards = tmp / "shards-jpeg"
    shard_once(manifests["jpeg"], jpeg_shards, args, workers=1)
    train_files = [
        manifests["jpeg"].parent / p
        for p in pd.read_csv(manifests["jpeg"]).query("split == 'train'")["path"]
    ]
    # warm-up: page cache, imports, process-pool start-up paths
    plain_once(train_files[:8])
    loader_once(jpeg_shards, args, epoch=0)

    for repeat in range(args.repeats):
        for fmt, w in shard_cases:
            rate = timed(
                lambda fmt=fmt, w=w: shard_once(
                    manifests[fmt], tmp / f"shards-{fmt}-bench", args, w
                )
            )
            shard_rates[f"{fmt}/workers={w}"].append(rate)
        epoch = repeat + 1
        load_rates["plain PIL -> tensor"].append(timed(lambda: plain_once(train_files)))
        load_rates["plain PIL + train transforms"].append(
            timed(lambda epoch=epoch: plain_transformed_once(train_files, args, epoch))
        )
        load_rates["make_loader (shards)"].append(
            timed(lambda epoch=epoch: loader_once(jpeg_shards, args, epoch))
        )
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)

    ratios: dict[str, float] = {}
    for fmt in manifests:
        base = shard_rates[f"{fmt}/workers={args.shard_workers[0]}"]
        for w in args.shard_workers[1:]:
            ratios[f"sharding {fmt} workers={w} / workers={args.shard_workers[0]}"] = median_ratio(
                base, shard_rates[f"{fmt}/workers={w}"]
            )
    plain = load_rates["plain PIL -> tensor"]
    for name in ("plain PIL + train transforms", "make_loader (shards)"):
        ratios[f"{name} / plain PIL -> tensor"] = median_ratio(plain, load_rates[name])
    ratios["make_loader (shards) / plain PIL + train transforms"] = median_ratio(
        load_rates["plain PIL + train transforms"], load_rates["make_loader (shards)"]
    )
    return {
        "num_images": num_images,
        "num_train_images": len(train_files),
        "sharding_images_per_s": {
            k: {"median": statistics.median(v), "repeats": v} for k, v in shard_rates.items()
        },
        "loading_images_per_s": {
            k: {"median": statistics.median(v), "repeats": v} for k, v in load_rates.items()
        },
        "ratios": ratios,
    }


def print_report(result: dict[str, Any], env: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(
        f"torch {env['torch']} | threads {env['threads']} | cpus {env['cpus']} | {result['num_images']} images "
        f"({result['num_train_images']} train) at {args.canvas_size}px -> {args.image_size}px | repeats {args.repeats}"
    )
    print(f"{'sharding (write_shards)':<44}{'images/s':>10}")
    for k, v in result["sharding_images_per_s"].items():
        print(f"  {k:<42}{v['median']:>10.1f}")
    print(f"{'loading, JPEG train split':<44}{'images/s':>10}")
    for k, v in result["loading_images_per_s"].items():
        print(f"  {k:<42}{v['median']:>10.1f}")
    print("ratios (median of paired per-repeat ratios)")
    for k, v in result["ratios"].items():
        print(f"  {k:<62}{v:>8.3f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=50, help="train images per class")
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--canvas-size", type=int, default=86, help="generated image side, px")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument(
        "--image-size", type=int, default=64, help="model input side S for the transforms"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--loader-workers", type=int, default=0, help="make_loader DataLoader workers"
    )
    parser.add_argument(
        "--shard-workers", default="1,2", help="comma-separated write_shards worker counts"
    )
    parser.add_argument(
        "--shard-max-count",
        type=int,
        default=64,
        help="samples per shard (several shards, so workers matter)",
    )
    parser.add_argument("--shard-max-bytes", type=int, default=256 * 1024**2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--keep", type=Path, help="work in this folder and keep it (default: a temp dir, removed)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.shard_workers = [int(w) for w in args.shard_workers.split(",") if w]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="glsim-data-bench-") as tmp:
            result = run(args, Path(tmp))
    print_report(result, env, args)
    if args.json:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"env": env, "settings": settings, **result}, indent=2) + "\n"
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
