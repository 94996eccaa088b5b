"""Aggregate per-seed results into ``results.json`` and Table-4-shaped tables.

``results.json``: ``{dataset: {model: {top1_mean, top1_std, seeds: {seed: top1}, lr}}}``,
accuracies in %. The std is the sample standard deviation over seeds (ddof=1; 0 for one
seed). Tables put datasets in rows and models in columns, bold the best and underline the
second best per row, add an Average row and the relative error reduction versus the ViT
baseline: ``(err_vit - err_model) / err_vit`` with ``err = 100 - top1``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Results = dict[str, dict[str, dict[str, Any]]]


def aggregate(reports: Iterable[dict[str, Any]]) -> Results:
    """Per-seed eval reports (``dataset, model, seed, lr, top1``) -> the results tree."""
    tree: dict[str, dict[str, dict[str, Any]]] = {}
    for r in reports:
        entry = tree.setdefault(r["dataset"], {}).setdefault(
            r["model"], {"seeds": {}, "lr": r.get("lr")}
        )
        seed = str(r["seed"])
        if seed in entry["seeds"]:
            raise ValueError(f"two reports for {r['dataset']}/{r['model']} seed {seed}")
        entry["seeds"][seed] = float(r["top1"])
    for models in tree.values():
        for entry in models.values():
            accs = list(entry["seeds"].values())
            entry["top1_mean"] = round(statistics.fmean(accs), 4)
            entry["top1_std"] = round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0
            entry["seeds"] = dict(sorted(entry["seeds"].items(), key=lambda kv: int(kv[0])))
    return tree


def relative_error_reduction(top1: float, baseline_top1: float) -> float:
    """Percent of the baseline's error removed (negative: more errors than the baseline)."""
    err_base = 100.0 - baseline_top1
    if err_base <= 0:
        return 0.0
    return 100.0 * (err_base - (100.0 - top1)) / err_base


def rank_marks(values: dict[str, float]) -> dict[str, str]:
    """``best`` / ``second`` marks per model (ties share the mark)."""
    distinct = sorted(set(values.values()), reverse=True)
    marks = {}
    for model, v in values.items():
        if distinct and v == distinct[0]:
            marks[model] = "best"
        elif len(distinct) > 1 and v == distinct[1]:
            marks[model] = "second"
    return marks


def _cells(
    results: Results, models: list[str]
) -> tuple[list[str], list[list[tuple[str, float, float]]]]:
    datasets = sorted(results)
    rows = []
    for d in datasets:
        rows.append(
            [
                (m, results[d][m]["top1_mean"], results[d][m]["top1_std"])
                for m in models
                if m in results[d]
            ]
        )
    return datasets, rows


def _average(results: Results, models: list[str]) -> dict[str, float]:
    out = {}
    for m in models:
        vals = [results[d][m]["top1_mean"] for d in results if m in results[d]]
        if len(vals) == len(results):
            out[m] = statistics.fmean(vals)
    return out


def render_table(
    results: Results,
    models: list[str] | None = None,
    *,
    fmt: str = "markdown",
    baseline: str = "vit",
) -> str:
    """Table 4 layout in ``markdown`` or ``latex``."""
    models = models or sorted({m for d in results.values() for m in d})
    bold, under = (
        (("**", "**"), ("<u>", "</u>"))
        if fmt == "markdown"
        else (("\\textbf{", "}"), ("\\underline{", "}"))
    )

    def mark(text: str, kind: str | None) -> str:
        if kind == "best":
            return f"{bold[0]}{text}{bold[1]}"
        if kind == "second":
            return f"{under[0]}{text}{under[1]}"
        return text

    datasets, rows = _cells(results, models)
    body: list[list[str]] = []
    for d, row in zip(datasets, rows, strict=True):
        values = {m: mean for m, mean, _ in row}
        marks = rank_marks(values)
        by_model = {m: (mean, std) for m, mean, std in row}
        sep = " ± " if fmt == "markdown" else " $\\pm$ "
        body.append(
            [d]
            + [
                mark(f"{by_model[m][0]:.2f}{sep}{by_model[m][1]:.2f}", marks.get(m))
                if m in by_model
                else "-"
                for m in models
            ]
        )
    avg = _average(results, models)
    marks = rank_marks(avg)
    body.append(
        ["Average"] + [mark(f"{avg[m]:.2f}", marks.get(m)) if m in avg else "-" for m in models]
    )
    if baseline in avg:
        body.append(
            [f"Rel. error reduction vs {baseline} (%)"]
            + [
                f"{relative_error_reduction(avg[m], avg[baseline]):.2f}" if m in avg else "-"
                for m in models
            ]
        )
    header = ["Dataset", *models]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        esc = lambda s: s.replace("_", "\\_").replace("%", "\\%")  # noqa: E731
        lines = [
            "\\begin{tabular}{l" + "c" * len(models) + "}",
            "\\toprule",
            " & ".join(map(esc, header)) + " \\\\",
            "\\midrule",
        ]
        lines += [" & ".join([esc(r[0]), *r[1:]]) + " \\\\" for r in body]
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown table format {fmt!r}; use markdown or latex")


def load_reports(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    reports = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"eval report missing: {path}; run its evaluate stage first")
        reports.append(json.loads(path.read_text()))
    return reports
