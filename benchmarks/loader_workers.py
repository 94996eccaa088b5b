"""Where a loader worker's time goes, and how many workers keep a GPU busy.

One worker's work per sample, measured on this machine's CPU with one thread:

1. a per-op breakdown at each image size: decode (PIL; CUB-like ~500x375 JPEG q=90 made
   by scaling up the built-in synthetic images, and the built-in PNG itself), JPEG decode
   with PIL's ``draft`` toward the resize target, Resize, RandomCrop, HorizontalFlip,
   TrivialAugmentWide, Normalize (uint8 -> float32), Erasing, ToTensorV2 (float32 and
   uint8), the per-batch finish (:class:`glsim.data.transforms.BatchFinish`, here on the
   CPU; on a GPU it runs there), and collate + the trip from one DataLoader worker to the
   main process for float32 and uint8 samples;
2. for each AugReg level and size, the images/s of one DataLoader worker (``workers=1``)
   that decodes the JPEGs and runs the OLD pipeline (albumentations' Normalize and Erasing
   in the worker, float32 batches) or the NEW one (``Preprocess.sample``: uint8 batches and
   an erasing rectangle; normalising and erasing happen per batch on the model's device),
   side by side in one run, and a check that both give the same floats;
3. beside each rate, what one worker must deliver to feed a GPU: the bare training step of
   an H200 measured ViT-B/16 at 2341 img/s at 224 (batch 64, bf16) and 399 at 448 (batch
   16), GLSim at 1134 / 241. On a 16-core node with one core kept for the main process,
   15 workers share the load: need = bare / 15 img/s per worker, and the predicted
   loop/bare-step ratio is ``min(1, 15 x per-worker rate / bare rate)``. The prediction
   assumes workers scale linearly with cores and the main process (which only moves
   uint8 batches and launches the finish on the GPU) is never the bottleneck.

Workers are measured one at a time (a single worker process beside the main process).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loader_workers.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loader_workers.py --sizes 224 --samples 64 --ops 4 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from glsim.config import SyntheticParams  # noqa: E402
from glsim.data.loader import decode_image  # noqa: E402
from glsim.data.synthetic import fine_grained_image, markings  # noqa: E402
from glsim.data.transforms import (  # noqa: E402
    DeferredErasing,
    DeferredNormalize,
    Preprocess,
    TrivialAugmentWide,
    build_transforms,
)

LEVELS = ("minimal", "weak", "medium", "strong")
BARE = {"ViT-B/16": {224: 2341.0, 448: 399.0}, "GLSim": {224: 1134.0, 448: 241.0}}
BATCH = {224: 64, 448: 16}


def source_images(count: int, seed: int = 0) -> dict[str, list[bytes]]:
    """CUB-like JPEGs (500x375, q=90) and the built-in PNGs, as encoded bytes."""
    rng = np.random.default_rng(seed)
    params = SyntheticParams()
    patterns = markings(params.num_classes)
    out: dict[str, list[bytes]] = {"jpeg 500x375": [], f"png {params.canvas_size}px": []}
    for i in range(count):
        img, _ = fine_grained_image(rng, i % params.num_classes, params, patterns)
        big = cv2.resize(img, (500, 375), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        big = np.clip(big + rng.normal(0, 8, big.shape), 0, 255).astype(np.uint8)
        for name, array, fmt, kw in (
            ("jpeg 500x375", big, "JPEG", {"quality": 90}),
            (f"png {params.canvas_size}px", img, "PNG", {}),
        ):
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format=fmt, **kw)
            out[name].append(buf.getvalue())
    return out


def per_image_pipeline(preprocess: Preprocess) -> A.Compose:
    """The OLD pipeline: the same steps with albumentations' own Normalize and Erasing."""
    steps = []
    for t in preprocess.transforms:
        if isinstance(t, DeferredNormalize):
            t = A.Normalize(mean=t.mean, std=t.std, max_pixel_value=t.max_pixel_value)
        elif isinstance(t, DeferredErasing):
            t = A.Erasing(scale=t.scale, ratio=t.ratio, fill=t.fill, p=t.p)
        steps.append(t)
    return A.Compose(steps)


def per_sample_ms(fn: Callable[[Any], Any], inputs: list[Any], repeats: int = 3) -> float:
    """Best-of-``repeats`` mean milliseconds of ``fn`` over ``inputs``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for x in inputs:
            fn(x)
        best = min(best, (time.perf_counter() - start) / len(inputs))
    return best * 1e3


def decode_draft(data: bytes, side: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (side, side))
        return np.asarray(image.convert("RGB"))


class _Samples(Dataset):
    """Samples made in the worker by ``make(i)``, ``length`` of them."""

    def __init__(self, make: Callable[[int], Any], length: int):
        self.make, self.length = make, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Any:
        return self.make(i)


def worker_rate(make: Callable[[int], Any], samples: int, batch: int) -> float:
    """Images/s through a DataLoader with one worker (after its first batch)."""
    loader = DataLoader(_Samples(make, samples + batch), batch_size=batch, num_workers=1)
    it = iter(loader)
    next(it)  # worker start-up
    start = time.perf_counter()
    count = sum(len(b[0]) for b in it)
    return count / (time.perf_counter() - start)


class _Decoded:
    def __init__(self, sources: list[bytes], transform: Callable[[np.ndarray], Any]):
        self.sources, self.transform = sources, transform

    def __call__(self, i: int) -> Any:
        return self.transform(decode_image(self.sources[i % len(self.sources)]))


def _old(pipeline: A.Compose) -> Callable[[np.ndarray], Any]:
    return lambda pixels: (pipeline(image=pixels)["image"],)


def op_table(sources: dict[str, list[bytes]], size: int, n: int, ratio: float) -> None:
    resized = int(size * ratio)
    jpegs = sources["jpeg 500x375"][:n]
    ops: list[tuple[str, float]] = []
    for name, data in sources.items():
        ops.append((f"decode ({name})", per_sample_ms(decode_image, data[:n])))
    ops.append(
        (
            f"decode with draft to {resized} (jpeg)",
            per_sample_ms(lambda d: decode_draft(d, resized), jpegs),
        )
    )
    pixels = [decode_image(d) for d in jpegs]
    resize = A.Resize(resized, resized, area_for_downscale="image")
    ops.append(("Resize", per_sample_ms(lambda x: resize(image=x), pixels)))
    crops_in = [resize(image=x)["image"] for x in pixels]
    crop = A.RandomCrop(size, size)
    ops.append(("RandomCrop", per_sample_ms(lambda x: crop(image=x), crops_in)))
    crops = [crop(image=x)["image"] for x in crops_in]
    flip = A.HorizontalFlip(p=1.0)
    ops.append(
        ("HorizontalFlip (when drawn, p=0.5)", per_sample_ms(lambda x: flip(image=x), crops))
    )
    ta = A.Compose([TrivialAugmentWide()], seed=0)
    ops.append(("TrivialAugmentWide (strong)", per_sample_ms(lambda x: ta(image=x), crops)))
    norm = A.Normalize()
    ops.append(("Normalize uint8 -> float32", per_sample_ms(lambda x: norm(image=x), crops)))
    floats = [norm(image=x)["image"] for x in crops]
    erase = A.Erasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), fill=0, p=1.0)
    ops.append(("Erasing (when drawn, p=0.3)", per_sample_ms(lambda x: erase(image=x), floats)))
    totensor = ToTensorV2()
    ops.append(("ToTensorV2 float32", per_sample_ms(lambda x: totensor(image=x), floats)))
    ops.append(("ToTensorV2 uint8", per_sample_ms(lambda x: totensor(image=x), crops)))
    batch = BATCH[size]
    finish = build_transforms(image_size=size, train=True).finish
    u8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    boxes = torch.tensor([[10, 20, 60, 90]] * batch, dtype=torch.int16)
    ops.append(
        (
            "finish per batch on CPU (GPU in training)",
            per_sample_ms(lambda _: finish(u8, boxes), [0] * 4) / batch,
        )
    )
    for dtype in (torch.float32, torch.uint8):
        one = torch.zeros(3, size, size, dtype=dtype)
        rate = worker_rate(
            lambda i, one=one: (one.clone(),), samples=max(n * 4, 8 * batch), batch=batch
        )
        ops.append((f"collate + worker->main ({str(dtype)[6:]}, batch {batch})", 1e3 / rate))
    print(f"\n## Per-op, one sample at {size} (resize {resized}), ms")
    print("| op | ms/sample |\n|---|---|")
    for name, ms in ops:
        print(f"| {name} | {ms:.2f} |")


def level_table(
    sources: dict[str, list[bytes]],
    size: int,
    samples: int,
    ratio: float,
    workers: int,
    repeats: int,
) -> None:
    jpegs = sources["jpeg 500x375"]
    batch = BATCH[size]
    print(
        f"\n## One worker at {size}: images/s (jpeg 500x375 sources), batch {batch}, "
        f"median of {repeats}"
    )
    need = {m: BARE[m][size] / workers for m in BARE}
    print(
        "| augreg | old img/s | new img/s | new/old | same floats | "
        + " | ".join(
            f"{m} need/worker | {m} loop/bare old -> new (workers to keep up)" for m in BARE
        )
        + " |"
    )
    print("|---|---|---|---|---|" + "---|---|" * len(BARE))
    for level in LEVELS:
        new = build_transforms(
            image_size=size, resize_ratio=ratio, train=True, augreg=level, seed=0
        )
        old = per_image_pipeline(
            build_transforms(image_size=size, resize_ratio=ratio, train=True, augreg=level)
        )
        old.set_random_seed(0)
        check = [decode_image(d) for d in jpegs[:8]]
        expected = torch.stack([old(image=x)["image"] for x in check])
        pixels, boxes = zip(*(new.sample(x) for x in check), strict=True)
        same = torch.equal(expected, new.finish(torch.stack(pixels), torch.stack(boxes)))
        rates: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(repeats):  # interleaved, so a busy spell hits both
            rates["old"].append(worker_rate(_Decoded(jpegs, _old(old)), samples, batch))
            rates["new"].append(worker_rate(_Decoded(jpegs, new.sample), samples, batch))
        rate_old, rate_new = (statistics.median(rates[k]) for k in ("old", "new"))
        cells = []
        for m in BARE:
            pred = [min(1.0, workers * r / BARE[m][size]) for r in (rate_old, rate_new)]
            full = [BARE[m][size] / r for r in (rate_old, rate_new)]  # workers to keep up
            cells.append(
                f"{need[m]:.0f} | {pred[0]:.2f} -> {pred[1]:.2f} ({full[0]:.1f} -> {full[1]:.1f})"
            )
        print(
            f"| {level} | {rate_old:.1f} | {rate_new:.1f} | {rate_new / rate_old:.2f} | "
            f"{'yes' if same else 'NO'} | " + " | ".join(cells) + " |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--resize-ratio", type=float, default=1.34)
    parser.add_argument("--sources", type=int, default=64, help="distinct source images")
    parser.add_argument("--ops", type=int, default=48, help="samples per op timing")
    parser.add_argument("--samples", type=int, default=256, help="samples per worker-rate run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved old/new rate runs")
    parser.add_argument(
        "--workers",
        type=int,
        default=15,
        help="workers on the GPU node (16 cores, 1 for the main process)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(
        f"# loader_workers: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"cv2 threads {cv2.getNumThreads()}; predicted with {args.workers} workers"
    )
    sources = source_images(args.sources)
    for size in args.sizes:
        op_table(sources, size, args.ops, args.resize_ratio)
    for size in args.sizes:
        level_table(sources, size, args.samples, args.resize_ratio, args.workers, args.repeats)


if __name__ == "__main__":
    main()
