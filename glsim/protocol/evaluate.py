"""A finished run evaluated on its test split (val for an LR-search run): the report with
the run key its checkpoint was trained under, the per-class table, the explanation grid,
all logged to the training's MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glsim import runs
from glsim.config import Params
from glsim.data.shards import read_class_names
from glsim.errors import RunError
from glsim.eval.evaluate import (
    accuracy_report,
    eval_batches,
    eval_loader,
    per_class_table,
    predict,
    write_per_class,
)
from glsim.eval.localisation import hit_rates
from glsim.runs import RunSpec
from glsim.train.run import load_record, load_run, num_classes
from glsim.utils import atomic_write_json, configure_determinism, resolve_device, seed_everything


def evaluate_run(params: Params, spec: RunSpec, *, track: bool = True) -> dict[str, Any]:
    """Evaluate a finished run on its test split (val for LR-search runs); write the report,
    with the run key its checkpoint was trained under, to ``spec.report_path(params)``, the
    per-class table (class index and name, count, correct, accuracy) beside it
    (``spec.per_class_path(params)``), and log both to the run's MLflow run (the training
    run of that key; the evaluation's code and machine go in ``eval.*`` tags).

    A checkpoint trained under another key than :func:`glsim.runs.run_key` of ``params``
    (e.g. evaluated with another ``model.glsim.top_k``) is refused with :class:`RunError`:
    its report would name a run that was never trained.

    The report holds the metrics (top-1, mean per-class accuracy, count, crop hit rates)
    and, copied from the run's ``train.json``, its weights digest, numerics profile and
    host (:func:`~glsim.train.run.load_record`: what the ledger compares); the C rows of the per-class table stay out of it, so ``dvc metrics``/``exp show`` list
    a handful of numbers per run, not one per class."""
    device = resolve_device(params.base.device)
    configure_determinism(
        params.base.num_threads, params.base.deterministic, device, params.base.numerics
    )
    model, state = load_run(params, spec)
    key = runs.run_key(params, spec)
    if state["run_key"] != key:
        raise RunError(
            f"{spec.run_dir(params)}: its checkpoint was trained under run key "
            f"{state['run_key'] or '(none)'}, but these params give {key}; evaluate with the "
            "params it was trained with, or rerun its train stage with these"
        )
    seed_everything(spec.seed)  # a random selector's boxes: the same report every time
    shards = runs.shard_source(params, spec.kind)  # data.shards_url when set
    result = predict(
        model,
        eval_loader(
            params, model, shards, images_root=runs.images_root(params, spec.kind), device=device
        ),
        device, top_k=params.model.glsim.top_k,
        resize_ratio=params.data.resize_ratio, total=eval_batches(params, shards),
    )  # fmt: skip
    classes = num_classes(params)
    table = per_class_table(
        result["labels"], result["preds"], read_class_names(runs.shard_source(params), classes)
    )
    report: dict[str, Any] = {
        "dataset": params.data.dataset,
        "model": spec.name,
        "base_model": spec.model,
        "kind": spec.kind,
        "seed": spec.seed,
        "lr": spec.lr if spec.lr is not None else params.train.lr,
        "run_key": state["run_key"],  # the key the evaluated weights were trained under
        **accuracy_report(result["labels"], result["preds"], classes),
        **load_record(spec.run_dir(params)),  # what those weights' bits depend on
    }
    if result["boxes"] is not None:
        report["localisation"] = {
            k: round(v, 4)
            for k, v in hit_rates(
                result["boxes"], result["targets"], params.data.image_size
            ).items()
        }
    table_path = write_per_class(table, spec.per_class_path(params))
    grid = None if spec.kind == "lrsearch" else write_explanations(params, spec, model, shards)
    out_path = atomic_write_json(spec.report_path(params), report)  # last: it marks the run done
    if track:
        from glsim.tracking.mlflow import Tracker

        with Tracker(
            experiment=params.base.experiment,
            run_name=spec.label(params),
            run_dir=spec.run_dir(params),
            run_key=key,  # the training run of these weights, never another configuration's
            provenance_prefix="eval.",  # the training's git_commit/runtime.* stay as they were
        ) as tracker:
            split = "val" if spec.kind == "lrsearch" else "test"  # the search scores its val part
            flat = {
                f"{split}/top1": report["top1"],
                f"{split}/mean_per_class": report["mean_per_class"],
            }
            flat.update({f"{split}/{k}": v for k, v in report.get("localisation", {}).items()})
            tracker.log_metrics(flat)
            tracker.log_artifact(out_path, artifact_path="eval")
            tracker.log_artifact(table_path, artifact_path="eval")
            if grid is not None:
                tracker.log_artifact(grid, artifact_path="eval")
    return report


EXPLAINED_IMAGES = 6  # test images in a run's explanation grid


def write_explanations(params: Params, spec: RunSpec, model, shards: str) -> Path | None:
    """The explanation grid of a trained run (``glsim explain`` on its first
    :data:`EXPLAINED_IMAGES` test images: GLS heatmap, crop box, crop, true and top-3
    classes) at ``spec.explain_path(params)``; None for a model without a ViT patch grid."""
    from glsim.explain import write_grid

    images, labels, _ = next(iter(eval_loader(params, model, shards)))
    n = min(EXPLAINED_IMAGES, images.shape[0])
    device = next(model.parameters()).device
    return write_grid(
        model, images[:n].to(device), spec.explain_path(params),
        class_names=read_class_names(shards, num_classes(params)),
        crop_tokens=params.model.glsim.top_k, labels=labels[:n].tolist(),
        title=spec.label(params),
    )  # fmt: skip
