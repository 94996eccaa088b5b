"""The ``localisation_curve`` stage (``curve/dvc.yaml``): how localisation grows with
pretraining.

The upstream pretraining of the backbone (:mod:`glsim.train.pretrain`) is run once per task
of ``curve.tasks`` (as ``pretrain.task``: supervised on a generated label, or
self-distillation without labels) and seed of ``curve.seeds`` (as ``base.seed``) for
``curve.epochs`` epochs, keeping the weights before the first step and after every epoch,
with their upstream test accuracy. Every ``curve.every``-th snapshot is probed as the
``probe`` stage probes the default backbone (:func:`glsim.eval.localisation.probe_backbone`):
GLS, last-layer CLS attention, attention rollout and random scores on the test split of the
dataset, each selector's box against its shuffled, centred and random controls (IoU, hit
rate, object share) and its top token against the shuffled, centre and random points
(pointing game). The rows are summarised, judged and drawn by :mod:`glsim.eval.curve`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glsim import runs
from glsim.config import Params
from glsim.eval.curve import CONTROLS, MEASURES, SELECTORS, VERDICT_MEASURES, write_outputs
from glsim.eval.localisation import probe_backbone, probe_data
from glsim.train.pretrain import pretrain_backbone, snapshot_path


def seed_params(params: Params, seed: int, task: str) -> Params:
    """``params`` for the curve's pretraining of ``seed`` on ``task``: ``base.seed`` is
    ``seed``, ``pretrain.task`` is ``task``, ``pretrain.epochs`` is ``task``'s
    ``curve.epochs`` and the weights go to its own folder."""
    work = runs.localisation_curve_dir(params, seed, task)
    base = params.base.model_copy(update={"seed": seed})
    pretrain = params.pretrain.model_copy(
        update={
            "task": task,
            "epochs": params.curve.epochs_for(task),
            "output": work / "backbone.safetensors",
        }
    )
    return params.model_copy(update={"base": base, "pretrain": pretrain})


def probed_epochs(params: Params, task: str) -> list[int]:
    """0, every ``curve.every``-th epoch of ``task``'s curve, and the last."""
    last = params.curve.epochs_for(task)
    return sorted({*range(0, last + 1, params.curve.every), last})


def pretrain_seed(params: Params, seed: int, task: str) -> Path:
    """Pretrain (or resume, or find finished) the curve's backbone of ``seed`` on ``task``;
    returns the snapshot folder, which also holds ``epoch<E>.json`` (step and upstream
    accuracy)."""
    p = seed_params(params, seed, task)
    work = runs.localisation_curve_dir(params, seed, task)
    snapshots = work / "snapshots"
    pretrain_backbone(
        p, work_dir=work, report_path=work / "pretrain.json", snapshot_dir=snapshots,
        snapshot_info=True,
    )  # fmt: skip
    return snapshots


def probe_rows(params: Params, task: str, seed: int, snapshots: Path, data) -> list[dict[str, Any]]:
    """One row per probed snapshot, selector and measure; ``data``: the test split as
    :func:`glsim.eval.localisation.probe_data` read it (once for every snapshot)."""
    rows = []
    for epoch in probed_epochs(params, task):
        weights = snapshot_path(snapshots, epoch)
        info = json.loads(weights.with_suffix(".json").read_text())
        report = probe_backbone(params, data=data, weights=weights)
        for selector in SELECTORS:
            r = report[selector]
            for measure in MEASURES:
                rows.append(
                    {
                        "task": task, "seed": seed, "epoch": epoch, "step": info["step"],
                        "upstream_acc": info["upstream_test_acc"], "selector": selector,
                        "measure": measure, "value": r[measure],
                        **{c: r[f"{measure}_{c}"] for c in CONTROLS},
                        "zoom": r["zoom"],
                    }
                )  # fmt: skip
    return rows


def localisation_curve(params: Params, *, track: bool = True) -> dict[str, Any]:
    """Pretrain every task and seed (keyed and resumable), probe the snapshots, write the
    outputs (:func:`glsim.runs.localisation_curve_paths`) and log them, with the mean
    curves as metrics at their pretraining steps, to one MLflow run. Returns the verdicts
    by task.

    The dataset must carry object boxes (the built-in one does); one without is refused
    before any pretraining."""
    from glsim.utils import set_threads

    data = probe_data(params)  # the test split, read once for every snapshot
    if data is None:
        from glsim.errors import RunError

        raise RunError(
            f"data.datasets: {params.data.dataset} carries no object boxes, so localisation "
            "cannot be measured on it; run the curve on the built-in synthetic_fg"
        )
    rows = []
    for task in params.curve.tasks:
        for seed in params.curve.seeds:
            snapshots = pretrain_seed(params, seed, task)
            set_threads(params.base.num_threads)  # the probe's rates depend on it
            rows += probe_rows(params, task, seed, snapshots, data)
            print(f"{task} seed {seed}: {len(probed_epochs(params, task))} snapshots probed", flush=True)
    out = write_outputs(params, rows)
    if track:
        from glsim.tracking.mlflow import Tracker

        tags = {"dataset": params.data.dataset, "stage": "localisation_curve"}
        with Tracker(
            experiment=params.base.experiment,
            run_name=f"{params.data.dataset}/localisation_curve",
            tags=tags,
        ) as tracker:
            tracker.log_params({"curve": params.curve.model_dump(mode="json"),
                                "pretrain": params.pretrain.model_dump(mode="json")})  # fmt: skip
            for task, summary in out["summary"].items():
                for item in summary:
                    if item["measure"] in VERDICT_MEASURES:
                        name = f"{task}/{item['selector']}/{item['measure']}"
                        tracker.log_metrics(
                            {name: item["mean"], f"{name}_std": item["std"],
                             **{f"{name}_{c}": item[f"{c}_mean"] for c in CONTROLS}},
                            step=int(item["step"]),
                        )  # fmt: skip
            for path in out["paths"].values():
                tracker.log_artifact(path, artifact_path="localisation_curve")
    return out["verdicts"]
