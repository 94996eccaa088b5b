"""``glsim cost bench``: inference throughput and peak memory per model, image size and batch
size, and the best batch size of each (paper Sec. 5.3 and appendix: batch sizes 1 to 256,
the batch of highest throughput and its memory; Figs. 4 and 7).

Models are built by :func:`glsim.models.create_model` with the kwargs training uses
(:func:`glsim.train.run.model_kwargs`: the params' backbone and per-model sections) at
random weights (no weights file is read) and stochastic depth off.

Two passes per image size:

1. Memory, one model at a time, batch sizes in increasing order.

   * CUDA: ``torch.cuda.max_memory_reserved`` after one forward, its peak reset before each
     batch with only this model on the device: weights + activations + the caching
     allocator's slack (the paper's "VRAM"; ``nvidia-smi`` adds the CUDA context). An out-of-memory
     batch is recorded ``oom`` and ends the model's larger batches.
   * CPU: a fresh process per model (forked from a server that only imported glsim, or
     spawned), so other models' memory and the allocator caches they leave do not count:
     the peak RSS of one forward (Linux ``VmHWM``, reset before each batch through
     ``/proc/self/clear_refs``) minus the RSS before the model was built: weights +
     activations + allocator caches. Where the peak cannot be reset (not Linux), it is
     ``ru_maxrss`` over the after-import peak, so batch b's figure is the highest of
     batches <= b. A batch whose memory, extrapolated from the previous two, would pass
     ``max_memory_fraction`` of the available RAM is recorded ``skipped_memory`` and ends
     the model's larger batches.

2. Throughput, all models side by side (for every repeat and batch size: each model in
   turn, each call repeated for ``min_time`` seconds after ``warmup`` untimed calls);
   images/s is the median over repeats. Ratios of one model to another are medians of
   paired per-repeat ratios (throughput: of each repeat's best batch).

``amp``: forwards run under ``torch.autocast`` in bfloat16 (CPU and CUDA).
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glsim.config import Params
from glsim.cost.measure import median_ratio, synchronize, timed_rate
from glsim.models import create_model

MEMORY_MEASURE = {"cuda": "cuda_max_memory_reserved", "cpu": "cpu_peak_rss_delta"}
MiB = 2**20


@dataclass(frozen=True)
class BenchSettings:
    """What ``glsim cost bench`` measures (the ``cost`` params section, or the command's
    options)."""

    models: tuple[str, ...]
    image_sizes: tuple[int, ...]
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    repeats: int = 3
    warmup: int = 1
    min_time: float = 0.2
    amp: bool = False
    num_classes: int = 200
    max_memory_fraction: float = 0.5
    threads: int = 0


@dataclass
class MemoryResult:
    """One model's memory pass: bytes per batch size, and why larger batches were not run."""

    peak_bytes: dict[int, int] = field(default_factory=dict)
    stopped: dict[int, str] = field(default_factory=dict)  # batch -> "oom" | "skipped_memory"


def model_kwargs_for(params: Params, name: str, *, drop_path_rate: float = 0.0) -> dict[str, Any]:
    """``create_model`` kwargs for ``name`` as training builds it, at random weights."""
    from glsim.train.run import model_kwargs  # the adapter training uses

    random_init = params.with_overrides(
        {"model.backbone.weights": None, "model.resnet101.weights": None, "model.cal.weights": None}
    )
    return {**model_kwargs(random_init, name), "drop_path_rate": drop_path_rate}


def autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()


def inference_fn(
    model: nn.Module, images: torch.Tensor, *, amp: bool = False
) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode(), autocast(images.device, amp):
            model(images)

    return run


# ---------------------------------------------------------------------------------------
# memory


def _peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM (Linux, resettable), else ``ru_maxrss``."""
    status = _proc_status()
    if status is not None:
        return status["VmHWM"]
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _proc_status() -> dict[str, int] | None:
    """VmRSS and VmHWM of /proc/self/status in bytes (None off Linux)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    found = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024  # kB
    return found if len(found) == 2 else None


def _reset_peak_rss() -> bool:
    """Set this process's peak RSS to its current RSS (Linux >= 4.0: ``clear_refs`` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status() is not None


def available_ram_bytes() -> int | None:
    """MemAvailable (Linux), else psutil's figure, else None (no bound)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def extrapolated(peaks: dict[int, int], batch: int) -> int | None:
    """Memory at ``batch`` from the two largest measured batches (linear in the batch; from
    one, proportional to it: an over-estimate, as the weights do not grow)."""
    if not peaks:
        return None
    sizes = sorted(peaks)
    if len(sizes) == 1:
        return peaks[sizes[0]] * batch // sizes[0]
    b1, b2 = sizes[-2:]
    slope = (peaks[b2] - peaks[b1]) / (b2 - b1)
    return int(peaks[b2] + slope * (batch - b2))


def cpu_memory_child(
    name: str,
    kwargs: dict[str, Any],
    *,
    num_classes: int,
    image_size: int,
    batch_sizes: list[int],
    amp: bool,
    threads: int,
    limit_bytes: int | None,
) -> MemoryResult:
    """Runs in a fresh process: per batch size, the peak RSS of one forward over the RSS
    before the model was built (where the peak cannot be reset: over the after-import peak,
    and monotonic over the batches)."""
    from glsim.models.registry import load_builtin_models

    if threads > 0:
        torch.set_num_threads(threads)
    load_builtin_models()  # imports count as the baseline, not as the model's memory
    resettable = _reset_peak_rss()
    baseline = _proc_status()["VmRSS"] if resettable else _peak_rss_bytes()
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, image_size=image_size, **kwargs).eval()
    result = MemoryResult()
    for batch in sorted(batch_sizes):
        guess = extrapolated(result.peak_bytes, batch)
        if limit_bytes is not None and guess is not None and guess > limit_bytes:
            result.stopped[batch] = "skipped_memory"
            break
        images = torch.randn(batch, 3, image_size, image_size)
        if resettable:
            _reset_peak_rss()
        inference_fn(model, images, amp=amp)()
        result.peak_bytes[batch] = _peak_rss_bytes() - baseline
        del images
    return result


def cuda_memory(
    model: nn.Module, *, image_size: int, batch_sizes: list[int], amp: bool, device: torch.device
) -> MemoryResult:
    """Peak reserved CUDA memory per batch size with only ``model`` on ``device``."""
    result = MemoryResult()
    model.to(device)
    try:
        for batch in sorted(batch_sizes):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            try:
                images = torch.randn(batch, 3, image_size, image_size, device=device)
                inference_fn(model, images, amp=amp)()
                synchronize(device)
                del images
            except torch.cuda.OutOfMemoryError:
                result.stopped[batch] = "oom"
                break
            result.peak_bytes[batch] = int(torch.cuda.max_memory_reserved(device))
    finally:
        model.to("cpu")
        torch.cuda.empty_cache()
    return result


def _fresh_processes() -> multiprocessing.context.BaseContext:
    """Processes that have run no model: forked from a server that imported this module and
    nothing else ran (fast, and safe with torch's thread pools), else spawned."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def memory_pass(
    specs: dict[str, dict[str, Any]],
    models: dict[str, nn.Module],
    settings: BenchSettings,
    *,
    image_size: int,
    device: torch.device,
) -> dict[str, MemoryResult]:
    """Each model's :class:`MemoryResult` (see the module docstring for how)."""
    out: dict[str, MemoryResult] = {}
    if device.type == "cuda":
        for name, model in models.items():
            out[name] = cuda_memory(
                model, image_size=image_size, batch_sizes=list(settings.batch_sizes),
                amp=settings.amp, device=device,
            )  # fmt: skip
        return out
    available = available_ram_bytes()
    limit = None if available is None else int(settings.max_memory_fraction * available)
    for name, kwargs in specs.items():
        with ProcessPoolExecutor(max_workers=1, mp_context=_fresh_processes()) as pool:
            out[name] = pool.submit(
                cpu_memory_child, name, kwargs, num_classes=settings.num_classes,
                image_size=image_size, batch_sizes=list(settings.batch_sizes), amp=settings.amp,
                threads=settings.threads, limit_bytes=limit,
            ).result()  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------
# throughput


def throughput_pass(
    models: dict[str, nn.Module],
    batch_sizes: dict[str, list[int]],
    *,
    image_size: int,
    repeats: int,
    warmup: int,
    min_time: float,
    amp: bool = False,
    device: torch.device | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[int, list[float]]]:
    """Images/s per model and batch size, one figure per repeat, measured interleaved.

    Args:
        models: name -> model (put in eval mode and on ``device`` here).
        batch_sizes: name -> the batch sizes to run that model at.
    """
    device = device or torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    all_sizes = sorted({b for sizes in batch_sizes.values() for b in sizes})
    batches = {
        b: torch.randn(b, 3, image_size, image_size, generator=gen).to(device) for b in all_sizes
    }
    runners = {}
    for name, model in models.items():
        model.eval().to(device)
        for b in batch_sizes[name]:
            runners[name, b] = inference_fn(model, batches[b], amp=amp)
    for fn in runners.values():  # warm-up: allocator, oneDNN kernels, lazy init
        for _ in range(warmup):
            fn()
    rates: dict[str, dict[int, list[float]]] = {m: {b: [] for b in batch_sizes[m]} for m in models}
    for repeat in range(repeats):
        for b in all_sizes:
            for name in models:  # interleaved: A, B, A, B ...
                if (name, b) in runners:
                    rate = timed_rate(runners[name, b], items=b, min_time=min_time, device=device)
                    rates[name][b].append(rate)
        if progress:
            progress(f"{image_size}px: throughput repeat {repeat + 1}/{repeats} done")
    return rates


def best_per_repeat(rates: dict[int, list[float]]) -> list[float]:
    """Each repeat's highest images/s over the batch sizes."""
    return [max(per_repeat) for per_repeat in zip(*rates.values(), strict=True)]


# ---------------------------------------------------------------------------------------
# rows, best batch, ratios


def mark_best(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``best`` on the row of highest ``images_per_s`` of each (model, image size)."""
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        row["best"] = False
        if row["status"] != "ok":
            continue
        key = (row["model"], row["image_size"])
        if key not in best or row["images_per_s"] > best[key]["images_per_s"]:
            best[key] = row
    for row in best.values():
        row["best"] = True
    return rows


def best_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("best")]


def ratios(
    rows: list[dict[str, Any]],
    rates: dict[int, dict[str, dict[int, list[float]]]],
    *,
    reference: str = "glsim",
) -> dict[str, dict[str, float]]:
    """``<reference>_over_<other>`` per image size: ``throughput`` (median of paired
    per-repeat best-batch ratios) and ``memory`` (at each model's best batch)."""
    out: dict[str, dict[str, float]] = {}
    best = {(r["model"], r["image_size"]): r for r in best_rows(rows)}
    for size, per_model in rates.items():
        if (reference, size) not in best:
            continue
        ref = best[reference, size]
        for other in per_model:
            if other == reference or (other, size) not in best:
                continue
            other_memory = best[other, size]["peak_memory_mib"]
            entry = {
                "throughput": median_ratio(
                    best_per_repeat(per_model[other]), best_per_repeat(per_model[reference])
                ),
                "memory": ref["peak_memory_mib"] / other_memory if other_memory > 0 else None,
            }
            out[f"{reference}_over_{other}@{size}"] = entry
    return out


def bench(
    params: Params,
    settings: BenchSettings,
    *,
    device: torch.device,
    progress: Callable[[str], None] | None = print,
) -> tuple[list[dict[str, Any]], dict[int, dict[str, dict[int, list[float]]]]]:
    """Measure every model of ``settings`` at every image size and batch size.

    Returns:
        ``(rows, rates)``: one row per (model, image size, batch size) with ``status``
        (``ok``, ``oom``, ``skipped_memory``, ``not_run``), ``images_per_s`` (median),
        ``peak_memory_mib``, ``memory_measure`` and ``best``; and the per-repeat images/s,
        ``rates[image_size][model][batch]``.
    """
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    specs = {name: model_kwargs_for(params, name) for name in settings.models}
    rows: list[dict[str, Any]] = []
    all_rates: dict[int, dict[str, dict[int, list[float]]]] = {}
    for size in settings.image_sizes:
        torch.manual_seed(0)
        models = {
            name: create_model(name, num_classes=settings.num_classes, image_size=size, **kw)
            for name, kw in specs.items()
        }
        memory = memory_pass(specs, models, settings, image_size=size, device=device)
        if progress:
            progress(f"{size}px: memory measured ({MEMORY_MEASURE[device.type]})")
        runnable = {name: sorted(memory[name].peak_bytes) for name in models}
        rates = throughput_pass(
            models, runnable, image_size=size, repeats=settings.repeats,
            warmup=settings.warmup, min_time=settings.min_time, amp=settings.amp,
            device=device, progress=progress,
        )  # fmt: skip
        all_rates[size] = rates
        for name in models:
            for batch in settings.batch_sizes:
                peak = memory[name].peak_bytes.get(batch)
                stopped = [why for b, why in memory[name].stopped.items() if b <= batch]
                status = "ok" if peak is not None else (stopped or ["not_run"])[0]
                rows.append(
                    {
                        "model": name,
                        "image_size": size,
                        "batch_size": batch,
                        "device": device.type,
                        "dtype": "bfloat16-autocast" if settings.amp else "float32",
                        "threads": torch.get_num_threads(),
                        "status": status,
                        "images_per_s": statistics.median(rates[name][batch])
                        if peak is not None
                        else None,
                        "peak_memory_mib": peak / MiB if peak is not None else None,
                        "memory_measure": MEMORY_MEASURE[device.type],
                    }
                )
        del models
    return mark_best(rows), all_rates
