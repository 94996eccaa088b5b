"""The `aggregate` stage: every eval report of the configured runs -> results and tables."""

from __future__ import annotations

import statistics
from pathlib import Path

from glsim.config import Params
from glsim.eval.tables import aggregate, load_reports, render_table
from glsim.utils import atomic_write_json, atomic_write_text


def eval_report_path(params: Params, model: str, seed: int) -> Path:
    return params.base.reports_dir / "eval" / params.data.dataset / model / f"seed{seed}.json"


def localisation_table(reports: list[dict]) -> str:
    """Per model: mean crop hit rate vs the shuffled-box rate, zoom and IoU over seeds."""
    by_model: dict[str, list[dict]] = {}
    for r in reports:
        if "localisation" in r:
            by_model.setdefault(r["model"], []).append(r["localisation"])
    if not by_model:
        return ""
    lines = [
        "| Model | crop hit rate (%) | shuffled-box hit rate (%) | zoom (x) | IoU with object |",
        "|---|---|---|---|---|",
    ]
    for model, locs in sorted(by_model.items()):
        mean = {k: statistics.fmean(loc[k] for loc in locs) for k in locs[0]}
        lines.append(
            f"| {model} | {mean['hit_rate']:.1f} | {mean['hit_rate_shuffled']:.1f} | {mean['zoom']:.2f} | {mean['iou']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def aggregate_reports(params: Params, *, track: bool = True) -> list[Path]:
    """Write ``results.json``, ``results.md`` and ``results.tex`` under ``reports/``."""
    reports = load_reports(
        eval_report_path(params, m, s) for m in params.train.models for s in params.train.seeds
    )
    results = aggregate(reports)
    rdir = params.base.reports_dir
    models = list(params.train.models)
    md = (
        f"# Results: top-1 (%) mean ± std over seeds {params.train.seeds}\n\n"
        + render_table(results, models, fmt="markdown")
        + "\nBold: best; underlined: second best.\n"
    )
    loc = localisation_table(reports)
    if loc:
        md += (
            "\n## Where the crop lands (test split; GLS boxes for models without a crop)\n\n" + loc
        )
    paths = [
        atomic_write_json(rdir / "results.json", results),
        atomic_write_text(rdir / "results.md", md),
        atomic_write_text(rdir / "results.tex", render_table(results, models, fmt="latex")),
    ]
    if track:
        from glsim.tracking.mlflow import Tracker

        with Tracker(
            experiment=params.base.experiment,
            run_name=f"{params.data.dataset}/aggregate",
            tags={"stage": "aggregate"},
        ) as tracker:
            tracker.log_params(
                {
                    "train": {"models": models, "seeds": params.train.seeds},
                    "data": {"dataset": params.data.dataset},
                }
            )
            for dataset, per_model in results.items():
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
