"""The `aggregate` stage: every dataset's eval, ablation and LR-search reports -> the
results tree, Table 4, the ablation tables and the localisation table."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from glsim.config import Params, TableSpec, for_dataset
from glsim.eval.tables import aggregate, load_reports, render_table
from glsim.utils import atomic_write_json, atomic_write_text


def eval_report_path(params: Params, model: str, seed: int) -> Path:
    return params.dataset_reports / "eval" / model / f"seed{seed}.json"


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {std:.2f}"


def localisation_table(reports: list[dict[str, Any]]) -> str:
    """Per dataset and run: crop hit rate vs the shuffled-box rate, zoom and IoU (mean ± std)."""
    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in reports:
        if "localisation" in r:
            groups.setdefault((r["dataset"], r["model"]), []).append(r["localisation"])
    if not groups:
        return ""
    lines = [
        "| Dataset | Run | crop hit rate (%) | shuffled-box hit rate (%) | zoom (x) | IoU with object |",
        "|---|---|---|---|---|---|",
    ]
    for (dataset, run), locs in sorted(groups.items()):
        cells = [
            _mean_std([loc[k] for loc in locs])
            for k in ("hit_rate", "hit_rate_shuffled", "zoom", "iou")
        ]
        lines.append(f"| {dataset} | {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ablation_table(spec: TableSpec, results: dict[str, dict[str, Any]], dataset: str) -> str:
    """One ablation table (rows x columns of run references) as Markdown, mean ± std."""
    lines = [
        f"### {spec.title} ({dataset})",
        "",
        "| | " + " | ".join(spec.columns) + " |",
        "|---|" + "---|" * len(spec.columns),
    ]
    for label, refs in spec.rows.items():
        cells = []
        for ref in refs:
            entry = results.get(ref)
            cells.append(f"{entry['top1_mean']:.2f} ± {entry['top1_std']:.2f}" if entry else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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


def aggregate_reports(params: Params, *, track: bool = True) -> list[Path]:
    """Write ``results.json``, ``results.md`` and ``results.tex`` under ``reports/``.

    ``results.json``: ``{dataset: {model: {top1_mean, top1_std, seeds, lr}}}`` for the main
    models (Table 4); ablation variants are under ``{dataset: {"ablations": {variant: ...}}}``.
    """
    from glsim.train.protocol import ablation_report_path, lr_report_path

    models, seeds = list(params.train.models), list(params.train.seeds)
    main, variant_reports, ablation, lr_reports = [], [], {}, []
    for dataset in params.data.datasets:
        p = for_dataset(params, dataset)
        main += load_reports(eval_report_path(p, m, s) for m in models for s in seeds)
        variants = load_reports(
            ablation_report_path(p, v, s) for v in params.ablations.variants for s in seeds
        )
        variant_reports += variants
        ablation[dataset] = aggregate(variants).get(dataset, {}) if variants else {}
        lr_reports += [
            json.loads(lr_report_path(p, m).read_text())
            for m in models
            if lr_report_path(p, m).is_file()
        ]
    table4 = aggregate(main)  # the main models only (Table 4)
    results: dict[str, Any] = {d: dict(per_model) for d, per_model in table4.items()}
    for dataset, entries in ablation.items():
        if entries:
            results.setdefault(dataset, {})["ablations"] = entries

    md = [
        f"# Results: top-1 (%) mean ± std over seeds {seeds}",
        "",
        render_table(table4, models),
        "Bold: best; underlined: second best. Std: sample std over seeds.",
        "",
    ]
    for dataset in params.data.datasets:
        runs = {**table4.get(dataset, {}), **ablation.get(dataset, {})}
        for spec in params.ablations.tables.values():
            md += [ablation_table(spec, runs, dataset)]
    loc = localisation_table(main + variant_reports)
    if loc:
        md += ["## Where the crop lands (test split; GLS boxes for models without a crop)", "", loc]
    lrs = lr_table(lr_reports)
    if lrs:
        md += ["## LR search (val split)", "", lrs]
    rdir = params.base.reports_dir
    paths = [
        atomic_write_json(rdir / "results.json", results),
        atomic_write_text(rdir / "results.md", "\n".join(md)),
        atomic_write_text(rdir / "results.tex", render_table(table4, models, fmt="latex")),
    ]
    if track:
        from glsim.tracking.mlflow import Tracker

        with Tracker(
            experiment=params.base.experiment, run_name="aggregate", tags={"stage": "aggregate"}
        ) as tracker:
            tracker.log_params(
                {"datasets": list(params.data.datasets), "models": models, "seeds": seeds}
            )
            for dataset, per_model in table4.items():
                for model, entry in per_model.items():
                    tracker.log_metrics(
                        {
                            f"{dataset}/{model}/top1_mean": entry["top1_mean"],
                            f"{dataset}/{model}/top1_std": entry["top1_std"],
                        }
                    )
            for p in paths:
                tracker.log_artifact(p, artifact_path="tables")
    return paths
