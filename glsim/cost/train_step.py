"""``glsim cost bench --train-step``: images/s of one training step (forward, backward,
clipping, optimiser step) per model, image size and batch size, on a given device: the
throughput table ``glsim plan --throughput`` turns into GPU-hours.

A step is :func:`glsim.train.loop.train_step` with what a run trains with: the model built
as training builds it (:func:`glsim.cost.bench.model_kwargs_for`, random weights, the
recipe's stochastic depth), the recipe's optimiser, label smoothing, gradient clipping and
precision (CUDA: float16 autocast with a gradient scaler when ``train.amp``; CPU: as
``train.cpu_amp`` resolves). Inputs are random tensors already on the device, so data
loading is not counted. Models are measured one after another (absolute rates, not ratios);
the figure is the median over ``repeats`` of ``min_time``-second measurements after
``warmup`` untimed steps. A batch that runs out of CUDA memory is recorded ``oom``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glsim.config import Params
from glsim.cost.bench import MiB, model_kwargs_for
from glsim.cost.measure import format_rows, timed_rate
from glsim.models import create_model

TRAIN_STEP_FILE = "train_step.csv"


def step_fn(model: nn.Module, params: Params, batch_size: int, image_size: int, num_classes: int,
            device: torch.device) -> tuple[Callable[[], None], str]:  # fmt: skip
    """One training step of ``model`` on a fixed random batch, and the precision it runs in."""
    from glsim.train.loop import build_optimizer, train_step
    from glsim.train.run import recipe

    rcp = recipe(params)
    optimizer = build_optimizer(model, rcp)
    criterion = nn.CrossEntropyLoss(label_smoothing=rcp.label_smoothing)
    dtype = rcp.autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device)
    targets = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)

    def run() -> None:
        train_step(
            model, images, targets, optimizer=optimizer, criterion=criterion, scaler=scaler,
            clip_grad=rcp.clip_grad, use_amp=dtype is not None, device_type=device.type,
            amp_dtype=dtype or torch.float16,
        )  # fmt: skip

    return run, "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')}-autocast"


def train_step_rows(
    params: Params,
    *,
    models: list[str],
    image_sizes: list[int],
    batch_sizes: list[int],
    device: torch.device,
    repeats: int = 3,
    warmup: int = 2,
    min_time: float = 1.0,
    num_classes: int = 200,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (model, image size, batch size): ``images_per_s`` of a training step
    (median over repeats), ``step_ms``, ``status`` (``ok`` or ``oom``) and, on CUDA, the
    step's peak allocated memory."""
    drop_path = params.train.regularisation().drop_path
    rows: list[dict[str, Any]] = []
    for size in image_sizes:
        for name in models:
            torch.manual_seed(0)
            kwargs = model_kwargs_for(params, name, drop_path_rate=drop_path)
            model = create_model(name, num_classes=num_classes, image_size=size, **kwargs)
            model.to(device).train()
            for batch in sorted(batch_sizes):
                row: dict[str, Any] = {
                    "model": name, "image_size": size, "batch_size": batch,
                    "device": device.type, "dtype": None, "status": "ok",
                    "images_per_s": None, "step_ms": None, "peak_memory_mib": None,
                }  # fmt: skip
                try:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    fn, row["dtype"] = step_fn(model, params, batch, size, num_classes, device)
                    for _ in range(warmup):
                        fn()
                    rates = [
                        timed_rate(fn, items=batch, min_time=min_time, device=device)
                        for _ in range(repeats)
                    ]
                except torch.cuda.OutOfMemoryError:
                    row["status"] = "oom"
                    rows.append(row)
                    break
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                rate = statistics.median(rates)
                row.update(images_per_s=rate, step_ms=1000 * batch / rate)
                if device.type == "cuda":
                    row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / MiB
                rows.append(row)
                if progress:
                    progress(f"{name} {size}px batch {batch}: {rate:.1f} images/s (training step)")
            del model
    return rows


def write_train_step(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """``out_dir/train_step.csv`` (the table ``glsim plan --throughput`` reads)."""
    from glsim.utils import atomic_write_text

    return atomic_write_text(Path(out_dir) / TRAIN_STEP_FILE, format_rows(rows, "csv") + "\n")
