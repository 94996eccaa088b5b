"""What every cost measurement shares: a timed call, paired ratios, and rows as CSV/JSON.

Measurements are side by side in one run: every compared callable is timed once per
repeat, in turn (A, B, A, B ...), so drift in machine load hits them alike, and a ratio is
the median over repeats of the paired per-repeat ratios.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing this module (the CLI does) loads no torch
    import torch


def synchronize(device: torch.device | None) -> None:
    """Wait for queued CUDA work (a CUDA call returns before the kernels finish)."""
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed_seconds(
    fn: Callable[[], object], *, min_time: float, device: torch.device | None = None
) -> float:
    """Seconds per call of ``fn``, calling it until ``min_time`` seconds have passed (at
    least once)."""
    calls = 0
    synchronize(device)
    start = time.perf_counter()
    while True:
        fn()
        calls += 1
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def timed_rate(
    fn: Callable[[], object],
    *,
    items: int,
    min_time: float,
    device: torch.device | None = None,
) -> float:
    """Items per second of ``fn`` handling ``items`` per call (see :func:`timed_seconds`)."""
    return items / timed_seconds(fn, min_time=min_time, device=device)


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over repeats of the paired ratios b[i] / a[i]."""
    return statistics.median(y / x for x, y in zip(a, b, strict=True))


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """``rows`` (dicts with the same keys) as ``json`` or ``csv``."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    raise ValueError(f"unknown format {fmt!r}; use json or csv")
