"""The tables of the `aggregate` stage, from report dicts: the localisation table, the
ablation tables and the LR-search table (Table 4 itself is :mod:`glsim.eval.tables`).
Reading the reports and writing the results is the protocol's
(:func:`glsim.protocol.report.aggregate_reports`)."""

from __future__ import annotations

import statistics
from typing import Any

from glsim.config import TableSpec


def _mean_std(values: list[float], digits: int = 2) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


LOCALISATION_COLUMNS = {  # report key -> column (glsim.eval.localisation)
    "hit_rate": "crop hit rate (%)",
    "hit_rate_shuffled": "shuffled",
    "hit_rate_centred": "centred",
    "hit_rate_random": "random",
    "iou": "IoU with object",
    "iou_shuffled": "shuffled",
    "iou_centred": "centred",
    "iou_random": "random",
    "object_share": "object share in crop",
    "object_share_centred": "centred",
    "zoom": "zoom (x)",
}


def localisations(reports: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, float]]]:
    """Each (dataset, run)'s localisation measures, one dict per seed's report that has them."""
    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in reports:
        if "localisation" in r:
            groups.setdefault((r["dataset"], r["model"]), []).append(r["localisation"])
    return groups


def localisation_table(reports: list[dict[str, Any]]) -> str:
    """Per dataset and run: each crop measure beside its controls with the same box sizes
    (shuffled, centred, random), and the zoom (mean ± std over seeds; ``-`` where a report
    predates a measure)."""
    groups = localisations(reports)
    if not groups:
        return ""
    lines = [
        "| Dataset | Run | " + " | ".join(LOCALISATION_COLUMNS.values()) + " |",
        "|---|---|" + "---|" * len(LOCALISATION_COLUMNS),
    ]
    for (dataset, run), locs in sorted(groups.items()):
        cells = [
            # IoU and object share are fractions: a third decimal tells them from the controls
            _mean_std([loc[k] for loc in locs], 3 if k.startswith(("iou", "object")) else 2)
            if all(k in loc for loc in locs)
            else "-"
            for k in LOCALISATION_COLUMNS
        ]
        lines.append(f"| {dataset} | {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ablation_table(
    spec: TableSpec,
    results: dict[str, dict[str, Any]],
    dataset: str,
    zooms: dict[str, list[float]] | None = None,
) -> str:
    """One ablation table (rows x columns of run references) as Markdown, mean ± std.

    ``zooms`` maps a run that crops to its seeds' mean crop zoom (the ``zoom`` of each
    report's localisation). When every run of the table crops, each column is followed by
    its zoom, so crops of different sizes are not compared as if they were one treatment.
    """
    zooms = zooms or {}
    refs_all = [ref for refs in spec.rows.values() for ref in refs]
    with_zoom = bool(refs_all) and all(ref in zooms for ref in refs_all)
    columns = [c for col in spec.columns for c in ([col, "zoom (x)"] if with_zoom else [col])]
    lines = [
        f"### {spec.title} ({dataset})",
        "",
        "| | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for label, refs in spec.rows.items():
        cells = []
        for ref in refs:
            entry = results.get(ref)
            cells.append(f"{entry['top1_mean']:.2f} ± {entry['top1_std']:.2f}" if entry else "-")
            if with_zoom:
                cells.append(_mean_std(zooms[ref]) if zooms[ref] else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def crop_zooms(
    reports: list[dict[str, Any]], datasets: list[str], cropping: list[str]
) -> dict[str, dict[str, list[float]]]:
    """Per dataset, the per-seed crop zoom of each run in ``cropping`` (the GLSim runs, whose
    localisation is their own crop; other models' is the GLS box they would crop), from its
    reports, grouped once for every dataset; a run with no report yet maps to ``[]``."""
    groups = localisations(reports)
    return {
        dataset: {
            ref: [loc["zoom"] for loc in groups.get((dataset, ref), []) if "zoom" in loc]
            for ref in cropping
        }
        for dataset in datasets
    }


def lr_table(lr_reports: list[dict[str, Any]]) -> str:
    if not lr_reports:
        return ""
    lines = ["| Dataset | Model | val top-1 (%) by LR | chosen LR |", "|---|---|---|---|"]
    for r in lr_reports:
        by_lr = (
            ", ".join(f"{lr}: {acc:.2f}" for lr, acc in r.get("val_top1", {}).items())
            or "(no search)"
        )
        lines.append(f"| {r['dataset']} | {r['model']} | {by_lr} | {r['chosen_lr']:g} |")
    return "\n".join(lines) + "\n"
