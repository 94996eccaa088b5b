"""How localisation grows with pretraining, summarised: at what pretraining strength does
GLS find the object? The rows come from :mod:`glsim.protocol.curve` (the curve's
pretrainings, every probed snapshot against its controls); here they become the summary,
the verdicts, the tables and the plot.

A selector *localises* at a snapshot when, for a measure, the mean minus the standard
deviation over seeds of the selector is above the mean plus the standard deviation of each
of its three controls (the bands do not overlap); "localises" without a measure means on
both the IoU and the pointing game.

    rows    = [(task, seed, epoch, step, upstream acc, selector, measure, value, controls)]
    summary = per task: mean, std over seeds per (epoch, selector, measure) + the verdicts

The upstream accuracy is the linear head's top-1 for a supervised task and a k-NN top-1
on the CLS feature for self-distillation (the generated labels used for evaluation only).
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any

from glsim import runs
from glsim.config import Params
from glsim.utils import atomic_write_json, atomic_write_text, atomic_write_with

SELECTORS = ("gls", "attention", "rollout", "random")
CONTROLS = ("shuffled", "centred", "random")
MEASURES = ("iou", "pointing", "hit_rate", "object_share")
VERDICT_MEASURES = ("iou", "pointing")  # what "localises" asks of a selector


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (epoch, selector, measure): mean and std over seeds of the selector and of each
    control, and whether the selector's band is above every control's."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["epoch"], r["selector"], r["measure"]), []).append(r)
    out = []
    for (epoch, selector, measure), rs in sorted(groups.items()):
        mean, std = _mean_std([r["value"] for r in rs])
        item: dict[str, Any] = {
            "epoch": epoch, "step": rs[0]["step"], "selector": selector, "measure": measure,
            "seeds": len(rs), "mean": mean, "std": std,
            "upstream_acc_mean": statistics.fmean(r["upstream_acc"] for r in rs),
            "zoom_mean": statistics.fmean(r["zoom"] for r in rs),
        }  # fmt: skip
        beats = []
        for c in CONTROLS:
            cm, cs = _mean_std([r[c] for r in rs])
            item[f"{c}_mean"], item[f"{c}_std"] = cm, cs
            beats.append(mean - std > cm + cs)
        item["beats_all_controls"] = all(beats)
        out.append(item)
    return out


def verdicts(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """Per selector: the first epoch from which it localises (IoU and pointing game) at
    every later probed epoch, or None; and the epochs at which it localises at all."""
    by: dict[tuple[str, int], bool] = {}
    for item in summary:
        if item["measure"] in VERDICT_MEASURES:
            key = (item["selector"], item["epoch"])
            by[key] = by.get(key, True) and item["beats_all_controls"]
    epochs = sorted({e for _, e in by})
    out: dict[str, Any] = {}
    for selector in SELECTORS:
        ok = [e for e in epochs if by.get((selector, e))]
        from_epoch = None
        for e in reversed(epochs):
            if not by.get((selector, e)):
                break
            from_epoch = e
        out[selector] = {"localises_at_epochs": ok, "localises_from_epoch": from_epoch}
    return out


def _table(
    summary: list[dict[str, Any]], verdict: dict[str, Any], params: Params, task: str
) -> str:
    """One task's markdown section: per probed epoch, upstream accuracy and, for GLS and
    rollout, IoU and pointing game beside the best control (mean +- std over seeds)."""
    cell: dict[tuple, dict[str, Any]] = {
        (i["epoch"], i["selector"], i["measure"]): i for i in summary
    }
    epochs = sorted({i["epoch"] for i in summary})
    seeds = summary[0]["seeds"] if summary else 0

    def fmt(i: dict[str, Any], scale: float, digits: int) -> str:
        best = max(CONTROLS, key=lambda c: i[f"{c}_mean"])
        mark = " **" if i["beats_all_controls"] else ""
        return (
            f"{i['mean'] * scale:.{digits}f} ± {i['std'] * scale:.{digits}f}{mark} "
            f"(best control {best} {i[f'{best}_mean'] * scale:.{digits}f} ± "
            f"{i[f'{best}_std'] * scale:.{digits}f})"
        )

    upstream = (
        f"Upstream top-1: {params.pretrain.self_distillation.knn_k}-NN on the CLS feature "
        "(self-distillation trains without labels). "
        if task == "self_distillation"
        else ""
    )
    lines = [
        f"# Localisation vs pretraining, upstream task `{task}` ({params.data.dataset}, "
        f"{seeds} pretraining seeds {params.curve.seeds}, {params.curve.epochs_for(task)} epochs)",
        "",
        f"{upstream}Mean ± std over pretraining seeds; ** = beyond every control's band "
        "(mean - std above mean + std of the shuffled, centred and random control). "
        "Pointing game in %.",
        "",
        "| epoch | step | upstream top-1 (%) | GLS IoU | GLS pointing | rollout IoU | rollout pointing |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in epochs:
        g_iou, g_pt = cell[(e, "gls", "iou")], cell[(e, "gls", "pointing")]
        r_iou, r_pt = cell[(e, "rollout", "iou")], cell[(e, "rollout", "pointing")]
        lines.append(
            f"| {e} | {g_iou['step']} | {g_iou['upstream_acc_mean']:.1f} | {fmt(g_iou, 1, 3)} | "
            f"{fmt(g_pt, 1, 1)} | {fmt(r_iou, 1, 3)} | {fmt(r_pt, 1, 1)} |"
        )
    lines += ["", "Localises (IoU and pointing game beyond every control) from epoch:", ""]
    for selector, v in verdict.items():
        lines.append(
            f"- {selector}: {v['localises_from_epoch']} (at epochs {v['localises_at_epochs']})"
        )
    return "\n".join(lines) + "\n"


def _plot(summaries: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """One row per task: IoU, pointing game and upstream accuracy against pretraining
    steps, each selector's mean ± std over seeds, and GLS's centred and shuffled controls
    dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(len(summaries), 3, figsize=(15, 4.2 * len(summaries)), squeeze=False)
    for axes, (task, summary) in zip(grid, summaries.items(), strict=True):
        for ax, measure, label in (
            (axes[0], "iou", "IoU with the object box"),
            (axes[1], "pointing", "pointing game (%)"),
        ):
            for selector in SELECTORS:
                items = [
                    i for i in summary if i["selector"] == selector and i["measure"] == measure
                ]
                x = [i["step"] for i in items]
                m = [i["mean"] for i in items]
                s = [i["std"] for i in items]
                (line,) = ax.plot(x, m, marker="o", ms=3, label=selector)
                lo = [a - b for a, b in zip(m, s, strict=True)]
                hi = [a + b for a, b in zip(m, s, strict=True)]
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
                if selector == "gls":
                    for c, style in (("centred", "--"), ("shuffled", ":")):
                        ax.plot(x, [i[f"{c}_mean"] for i in items], style, color="grey",
                                label=f"gls {c} control")  # fmt: skip
            ax.set_title(f"{task}: {label}", fontsize=9)
            ax.set_xlabel("pretraining steps")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
        items = [i for i in summary if i["selector"] == "gls" and i["measure"] == "iou"]
        axes[2].plot(
            [i["step"] for i in items], [i["upstream_acc_mean"] for i in items], marker="o"
        )
        axes[2].set_title(f"{task}: upstream", fontsize=9)
        axes[2].set_xlabel("pretraining steps")
        knn = " (k-NN)" if task == "self_distillation" else ""
        axes[2].set_ylabel(f"upstream test top-1 (%){knn}")
    fig.tight_layout()
    atomic_write_with(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_outputs(params: Params, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The csv of every row (a ``task`` column), the summary json (keyed by task), the
    markdown tables and the plot (one section and one row per task); returns the summaries,
    the verdicts (both by task) and the paths."""
    paths = runs.localisation_curve_paths(params)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(paths["csv"], buf.getvalue())
    tasks = list(dict.fromkeys(r["task"] for r in rows))  # in curve.tasks order
    summary = {t: summarise([r for r in rows if r["task"] == t]) for t in tasks}
    verdict = {t: verdicts(summary[t]) for t in tasks}
    atomic_write_json(
        paths["json"],
        {
            "dataset": params.data.dataset, "seeds": params.curve.seeds,
            "epochs": params.curve.epochs, "top_k": params.model.glsim.top_k,
            "tasks": {t: {"verdicts": verdict[t], "summary": summary[t]} for t in tasks},
        },
    )  # fmt: skip
    sections = [_table(summary[t], verdict[t], params, t) for t in tasks]
    atomic_write_text(paths["md"], "\n".join(sections))
    _plot(summary, paths["png"])
    return {"summary": summary, "verdicts": verdict, "paths": paths}
