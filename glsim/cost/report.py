"""The bench's outputs: ``bench.csv`` (every row), ``bench.json`` (best batch per model and
the ratios, DVC metrics) and the accuracy trade-off plots of paper Figs. 4 and 7.

Accuracy is joined by model name from ``results.json`` (``glsim.protocol.report.aggregate_reports``:
``{dataset: {model: {top1_mean, top1_std, seeds, lr}}}``), i.e. measured at the image size
the models were trained at; a model without one keeps empty accuracy cells and is listed
under the plot instead of placed in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glsim.cost.bench import best_rows
from glsim.cost.measure import format_rows
from glsim.errors import CommandError
from glsim.utils import atomic_write_json, atomic_write_text, atomic_write_with

#: bench column -> (the plot's key in :func:`glsim.runs.cost_files`, its x label)
PLOTS = {
    "images_per_s": ("throughput_plot", "inference throughput (images/s, best batch)"),
    "peak_memory_mib": ("memory_plot", "peak inference memory (MiB, at that batch)"),
}


def read_accuracies(path: Path, dataset: str | None) -> dict[str, dict[str, float]]:
    """``{model: {top1_mean, top1_std}}`` of ``dataset`` in a ``results.json`` (entries
    without ``top1_mean``, e.g. ``ablations``, are skipped); ``{}`` when the dataset is not
    in it. ``dataset=None`` takes the file's only dataset."""
    try:
        results = json.loads(Path(path).read_text())
    except OSError as err:
        raise CommandError(f"--results {path}: cannot read it ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise CommandError(f"--results {path}: not JSON ({err})") from None
    if not isinstance(results, dict):
        raise CommandError(f"--results {path}: expected {{dataset: {{model: ...}}}}")
    if dataset is None:
        if len(results) != 1:
            raise CommandError(
                f"--results {path} has {len(results)} datasets ({', '.join(results)}); "
                "name one with --dataset"
            )
        dataset = next(iter(results))
    models = results.get(dataset) or {}
    return {
        model: {"top1_mean": float(r["top1_mean"]), "top1_std": float(r.get("top1_std", 0.0))}
        for model, r in models.items()
        if isinstance(r, dict) and "top1_mean" in r
    }


def join_accuracy(
    rows: list[dict[str, Any]], accuracies: dict[str, dict[str, float]]
) -> list[dict[str, Any]]:
    """Add ``top1_mean`` and ``top1_std`` to each row (None where the model has none)."""
    for row in rows:
        acc = accuracies.get(row["model"], {})
        row["top1_mean"] = acc.get("top1_mean")
        row["top1_std"] = acc.get("top1_std")
    return rows


def plot_tradeoff(best: list[dict[str, Any]], x: str, out: Path, *, title: str) -> Path:
    """Top-1 against ``x`` (a bench column) at each model's best batch, one point per
    (model, image size); models without accuracy are listed under the axes."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    xlabel = PLOTS[x][1]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    placed = [r for r in best if r["top1_mean"] is not None]
    missing = [r for r in best if r["top1_mean"] is None]
    for row in placed:
        ax.errorbar(row[x], row["top1_mean"], yerr=row["top1_std"] or 0, fmt="o", capsize=3)
        ax.annotate(
            f"{row['model']} {row['image_size']}",
            (row[x], row["top1_mean"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if missing:
        unit = "img/s" if x == "images_per_s" else "MiB"
        listed = ", ".join(f"{r['model']} {r['image_size']} ({r[x]:.4g} {unit})" for r in missing)
        fig.text(0.01, 0.01, f"no accuracy: {listed}", fontsize=7, wrap=True)
        fig.subplots_adjust(bottom=0.2)
    if not placed:
        ax.text(0.5, 0.5, "no accuracies in results.json", ha="center", transform=ax.transAxes)
    atomic_write_with(out, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return out


def write_bench(
    rows: list[dict[str, Any]],
    ratios: dict[str, dict[str, float]],
    paths: dict[str, Path],
    *,
    accuracies: dict[str, dict[str, float]],
    meta: dict[str, Any],
) -> list[Path]:
    """Write the bench CSV, its JSON summary (DVC metrics) and the two plots at ``paths``
    (:func:`glsim.runs.cost_files`)."""
    rows = join_accuracy(rows, accuracies)
    atomic_write_text(paths["csv"], format_rows(rows, "csv") + "\n")
    best = best_rows(rows)
    atomic_write_json(
        paths["json"],
        {
            **meta,
            "best": {f"{r['model']}@{r['image_size']}": r for r in best},
            "ratios": ratios,
        },
    )
    where = f"{meta.get('device', '?')}, {meta.get('dtype', 'float32')}"
    for x, (key, _) in PLOTS.items():
        plot_tradeoff(best, x, paths[key], title=f"{meta.get('dataset') or ''} ({where})")
    return [paths[k] for k in ("csv", "json", *(key for key, _ in PLOTS.values()))]


def format_bench(rows: list[dict[str, Any]], ratios: dict[str, dict[str, float]]) -> str:
    """A text table: every row, best batches starred, then the ratios."""
    lines = [
        f"{'model':<10} {'size':>5} {'batch':>6} {'images/s':>10} {'peak MiB':>10}  status",
    ]
    for r in rows:
        rate = f"{r['images_per_s']:>10.1f}" if r["images_per_s"] is not None else f"{'-':>10}"
        mem = f"{r['peak_memory_mib']:>10.1f}" if r["peak_memory_mib"] is not None else f"{'-':>10}"
        star = " *best" if r.get("best") else ""
        lines.append(
            f"{r['model']:<10} {r['image_size']:>5} {r['batch_size']:>6} {rate} {mem}  "
            f"{r['status']}{star}"
        )
    if rows:
        lines.append(f"memory: {rows[0]['memory_measure']}")
    for name, entry in ratios.items():
        memory = "-" if entry["memory"] is None else f"{entry['memory']:.3f}x"
        lines.append(f"{name}: throughput {entry['throughput']:.3f}x, memory {memory}")
    return "\n".join(lines)
