"""Bench, join accuracy, write: what ``glsim cost bench`` and the ``cost`` DVC stage run."""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from glsim.config import CostParams, Params
from glsim.cost.bench import BenchSettings, bench, ratios
from glsim.cost.measure import format_rows
from glsim.cost.report import read_accuracies, write_bench
from glsim.cost.timing import time_rows
from glsim.models import check_model_name
from glsim.runs import cost_paths, results_paths
from glsim.utils import atomic_write_text, resolve_device, set_threads


def bench_settings(cost: CostParams, *, threads: int = 0) -> BenchSettings:
    return BenchSettings(
        models=tuple(check_model_name(m) for m in cost.models),
        image_sizes=tuple(cost.image_sizes),
        batch_sizes=tuple(sorted(set(cost.batch_sizes))),
        repeats=cost.repeats,
        warmup=cost.warmup,
        min_time=cost.min_time,
        amp=cost.amp,
        num_classes=cost.num_classes,
        max_memory_fraction=cost.max_memory_fraction,
        threads=threads,
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def run_bench(
    params: Params,
    settings: BenchSettings,
    paths: dict[str, Path],
    *,
    device: torch.device,
    results: Path | None,
    dataset: str | None,
    progress: Callable[[str], None] | None = print,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Measure (:func:`glsim.cost.bench.bench`), join the accuracies of ``dataset`` in
    ``results`` (None: none) and write ``paths`` (:func:`glsim.runs.cost_files`).

    Returns:
        the rows and the GLSim-over-others ratios.
    """
    accuracies = read_accuracies(results, dataset) if results is not None else {}
    rows, rates = bench(params, settings, device=device, progress=progress)
    found = ratios(rows, rates)
    backbone = params.model.backbone
    meta = {
        "device": device.type,
        "device_name": device_name(device),
        "dtype": rows[0]["dtype"],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backbone": backbone.name,
        "backbone_overrides": dict(backbone.overrides),
        "results": str(results) if results is not None else None,
        "dataset": dataset,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
    }
    write_bench(rows, found, paths, accuracies=accuracies, meta=meta)
    return rows, found


def run_stage(params: Params, *, progress: Callable[[str], None] | None = print) -> list[Path]:
    """The ``cost`` stage: the bench of ``params.cost`` on ``model.backbone``, accuracies
    from ``results.json`` when the aggregate has written it, and the DFSM timing."""
    device = resolve_device(params.base.device)
    set_threads(params.base.num_threads)
    paths = cost_paths(params)
    results = results_paths(params)["json"]
    settings = bench_settings(params.cost, threads=params.base.num_threads)
    run_bench(
        params, settings, paths, device=device,
        results=results if results.is_file() else None, dataset=params.data.dataset,
        progress=progress,
    )  # fmt: skip
    backbone, cost = params.model.backbone, params.cost
    timing = time_rows(
        backbone.name, list(cost.dfsm_image_sizes), overrides=dict(backbone.overrides),
        repeats=cost.repeats, warmup=cost.warmup, min_time=cost.min_time,
        num_classes=cost.num_classes, device=device,
    )  # fmt: skip
    atomic_write_text(paths["time"], format_rows(timing, "csv") + "\n")
    return list(paths.values())
