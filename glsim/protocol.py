"""The paper's protocol (App. C) over single runs: the one layer the DVC stages
(``pipelines/``) and the cluster flows (``flows/``) call, so neither holds a recipe, a path
or a run key. Everything here is a function of the params tree (resolved for one dataset
with :func:`glsim.config.for_dataset`); paths and run keys come from :mod:`glsim.runs`.

* :func:`~glsim.config.check_params` (re-exported): registered model names.
* The data and pretraining stages, one function each: :func:`validate`, :func:`probe`,
  and re-exported :func:`~glsim.data.stage.prepare`, :func:`~glsim.data.stage.shard` and
  :func:`~glsim.train.pretrain.pretrain` (:func:`pretrain_done`: finished under its run
  key), which their stage scripts import from those modules, away from this one.
* :func:`search_lr`: for one model, train every LR of ``protocol.lr_grid`` on the search
  split's train part (seed ``protocol.search_seed``), score each on its val part, keep the
  best (ties: the earlier LR in the grid). Runs are keyed, so a rerun after a kill, or
  after an LR was added to the grid, trains only what is missing. Its parts, for callers
  that train each LR as a run of its own (the flows): :func:`check_search`,
  :func:`search_params`, :func:`search_spec`, :func:`search_val_top1`,
  :func:`record_lr_choice`.
* :func:`chosen_lr`: what a final or ablation run of that model trains with.
* :func:`train_final` / :func:`evaluate_run`: one seed of a model at its chosen LR;
  :func:`is_done`: a run finished and evaluated under its current run key.
* :func:`variant_params` / :func:`run_variant`: an ablation variant is a model plus dotted
  overrides of the params tree, trained and evaluated like a final run.
* :func:`aggregate_reports`: every dataset's reports -> ``reports/results.*``.

Imports point one way: this module uses train, eval, data, validation, tracking and runs;
nothing in those imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glsim import runs
from glsim.config import Params, ParamsError, check_params, for_dataset  # noqa: F401  (re-exported)
from glsim.data.shards import INDEX_NAME, ShardError, read_class_names, read_index
from glsim.data.stage import prepare, shard, shard_workers  # noqa: F401  (re-exported)
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
from glsim.eval.report import ablation_table, localisation_table, lr_table
from glsim.eval.tables import aggregate, load_reports, render_table
from glsim.models.registry import check_model_name
from glsim.runs import RunSpec
from glsim.train.pretrain import pretrain  # noqa: F401  (re-exported)
from glsim.train.run import is_finished, load_run, num_classes, train_run
from glsim.utils import (
    atomic_write_json,
    atomic_write_text,
    configure_determinism,
    resolve_device,
    seed_everything,
    set_threads,
)

if TYPE_CHECKING:
    from glsim.validation.suite import ValidationReport


# ---------------------------------------------------------------------------------------
# the data stages (pipelines/validate.py, probe.py; prepare and shard: glsim.data.stage)


def validate(params: Params) -> ValidationReport:
    """The great-expectations suite over the manifest and shard index; the report goes to
    ``reports/datasets/<dataset>/validation.json`` and MLflow, pass or fail. Raises
    :class:`~glsim.validation.suite.ValidationFailed` when an expectation fails."""
    from glsim.validation.stage import validate_and_track

    return validate_and_track(params)


def probe(params: Params) -> dict[str, Any]:
    """Where the pretrained backbone's GLS and CLS-attention boxes land on the test split
    before fine-tuning, against the shuffled-box baseline; written to the probe report."""
    from glsim.eval.localisation import probe_backbone
    from glsim.numerics import check_profile

    check_profile(params.base.numerics)
    set_threads(params.base.num_threads)  # the probe runs on the CPU; its rates depend on it
    report = probe_backbone(params)
    write_probe_explanations(params)
    atomic_write_json(runs.probe_report(params), report)
    return report


def write_probe_explanations(params: Params) -> Path | None:
    """The pretrained backbone's explanation grid (:func:`glsim.explain.write_grid` of the
    encoder alone: GLS needs no trained parameter) on the first test images."""
    from glsim.data.shards import read_class_names
    from glsim.explain import EncoderOnly, write_grid
    from glsim.models.backbone import create_vit

    bb, d = params.model.backbone, params.data
    vit = create_vit(bb.name, image_size=d.image_size, weights=bb.weights, **bb.overrides).eval()
    shards = runs.shard_source(params)
    images, labels, _ = next(iter(eval_loader(params, vit, shards)))
    n = min(EXPLAINED_IMAGES, images.shape[0])
    return write_grid(
        EncoderOnly(vit), images[:n], runs.probe_explain(params),
        class_names=read_class_names(shards, num_classes(params)),
        crop_tokens=params.model.glsim.top_k, labels=labels[:n].tolist(),
        title=f"{params.data.dataset}: pretrained backbone, before fine-tuning",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# pretraining (the stage itself: glsim.train.pretrain.pretrain)


def pretrain_done(params: Params) -> bool:
    """Pretraining finished under its current run key: the checkpoint is at the last epoch
    with :func:`glsim.runs.pretrain_key`, and the weights file and a report with that key
    (written last) exist."""
    key = runs.pretrain_key(params)
    report = runs.pretrain_report(params)
    return (
        is_finished(runs.pretrain_dir(params), key, params.pretrain.epochs)
        and Path(params.pretrain.output).is_file()
        and _report_key(report) == key
    )


def _report_key(path: Path) -> str | None:
    """The ``run_key`` a JSON report was written under (None: no report, or none in it)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("run_key")
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------
# LR search and the chosen LR


def _val_count(search_shards: Path) -> int:
    """Images in the LR search's val part (written as the ``test`` split of its shards)."""
    return int(read_index(search_shards)["splits"]["test"]["count"])


def check_search(params: Params, model: str) -> None:
    """What an LR search of ``model`` checks before training anything: the model is
    registered and, with a non-empty grid, the search split's val part is not empty."""
    check_model_name(model)
    if not params.protocol.lr_grid:
        return
    search_shards = runs.shards_dir(params, "lrsearch")
    if (search_shards / INDEX_NAME).is_file() and not _val_count(search_shards):
        raise ShardError(
            f"{search_shards}: the LR search's val part is empty (no class of the train "
            "split has two or more images); add train images, or set "
            "protocol.lr_grid: [] to train with train.lr"
        )


def search_params(params: Params) -> Params:
    """The tree an LR-search run trains with: ``train.epochs`` is ``protocol.search_epochs``
    (when set)."""
    epochs = params.protocol.search_epochs or params.train.epochs
    return params.with_overrides({"train.epochs": epochs}, source="protocol.search_epochs")


def search_spec(params: Params, model: str, lr: float) -> RunSpec:
    """The LR-search run of ``model`` at ``lr`` (seed ``protocol.search_seed``)."""
    return RunSpec(model=model, seed=params.protocol.search_seed, lr=lr, kind="lrsearch")


def record_lr_choice(params: Params, model: str, val_top1: dict[str, float]) -> dict[str, Any]:
    """Pick the LR from the search runs' val top-1 (keys ``f"{lr:g}"``; ties: the earlier LR
    in the grid) and write the search's report (``search.json`` in its run folder, and
    :func:`glsim.runs.lr_report`). With an empty grid: ``train.lr``, nothing searched."""
    check_model_name(model)
    grid = list(params.protocol.lr_grid)
    report: dict[str, Any] = {"dataset": params.data.dataset, "model": model, "grid": grid}
    if not grid:
        report.update(chosen_lr=params.train.lr, searched=False, val_top1={})
    else:
        missing = [f"{lr:g}" for lr in grid if f"{lr:g}" not in val_top1]
        if missing:
            raise RunError(
                f"LR search of {model!r}: no val top-1 for lr {', '.join(missing)} of "
                f"protocol.lr_grid {grid}; run those LRs first"
            )
        val = {f"{lr:g}": val_top1[f"{lr:g}"] for lr in grid}
        best = max(grid, key=lambda lr: (val[f"{lr:g}"], -grid.index(lr)))
        report.update(
            chosen_lr=best,
            searched=True,
            val_top1=val,
            epochs=search_params(params).train.epochs,
            seed=params.protocol.search_seed,
        )
    # the stage's run folder exists even when nothing was trained (empty grid)
    atomic_write_json(runs.lr_search_dir(params, model) / "search.json", report)
    rows = [{"lr": float(lr), "val_top1": v} for lr, v in report["val_top1"].items()]
    atomic_write_json(runs.lr_plot(params, model), rows)
    atomic_write_json(runs.lr_report(params, model), report)
    return report


def search_val_top1(params: Params, model: str) -> dict[str, float]:
    """Each LR-search run's val top-1 (keys ``f"{lr:g}"``), read from the val report it
    wrote, for callers that train and evaluate every LR as a run of its own. A run whose
    report is missing or was written under another run key raises :class:`RunError`."""
    sp = search_params(params)
    val: dict[str, float] = {}
    for lr in params.protocol.lr_grid:
        spec = search_spec(params, model, lr)
        path = spec.report_path(sp)
        if _report_key(path) != runs.run_key(sp, spec):
            raise RunError(
                f"{path}: the LR-search run of {model!r} at lr {lr:g} has not been trained and "
                "evaluated under the current configuration; run it first"
            )
        val[f"{lr:g}"] = json.loads(path.read_text())["top1"]
    return val


def search_lr(params: Params, model: str, *, track: bool = True) -> dict[str, Any]:
    """Run the LR search for ``model`` and write its report (see the module docstring)."""
    check_search(params, model)
    sp = search_params(params)
    val: dict[str, float] = {}
    for lr in params.protocol.lr_grid:
        spec = search_spec(params, model, lr)
        train_run(sp, spec, track=track)
        val[f"{lr:g}"] = evaluate_run(sp, spec, track=track)["top1"]
    return record_lr_choice(params, model, val)


def chosen_lr(params: Params, model: str) -> float:
    """The LR the search picked for ``model`` (``train.lr`` when the grid is empty)."""
    check_model_name(model)
    if not params.protocol.lr_grid:
        return params.train.lr
    path = runs.lr_report(params, model)
    if not path.is_file():
        raise RunError(
            f"LR search report missing: {path}; run the lr_search stage for {model!r} first"
        )
    report = json.loads(path.read_text())
    if report.get("grid") != list(params.protocol.lr_grid):
        raise RunError(
            f"{path} was searched over {report.get('grid')}, but protocol.lr_grid is "
            f"{params.protocol.lr_grid}; rerun the lr_search stage"
        )
    return float(report["chosen_lr"])


# ---------------------------------------------------------------------------------------
# final runs


def final_spec(params: Params, model: str, seed: int) -> RunSpec:
    """The final run of ``model`` with ``seed`` at its chosen LR."""
    return RunSpec(model=model, seed=seed, lr=chosen_lr(params, model))


def train_final(params: Params, model: str, seed: int, *, track: bool = True) -> Path:
    return train_run(params, final_spec(params, model, seed), track=track)


def evaluate_run(params: Params, spec: RunSpec, *, track: bool = True) -> dict[str, Any]:
    """Evaluate a finished run on its test split (val for LR-search runs); write the report,
    with the run key its checkpoint was trained under, to ``spec.report_path(params)``, the
    per-class table (class index and name, count, correct, accuracy) beside it
    (``spec.per_class_path(params)``), and log both to the run's MLflow run (the training
    run of that key; the evaluation's code and machine go in ``eval.*`` tags).

    A checkpoint trained under another key than :func:`glsim.runs.run_key` of ``params``
    (e.g. evaluated with another ``model.glsim.top_k``) is refused with :class:`RunError`:
    its report would name a run that was never trained.

    The report holds the metrics (top-1, mean per-class accuracy, count, crop hit rates);
    the C rows of the per-class table stay out of it, so ``dvc metrics``/``exp show`` list
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
    from glsim.data.shards import read_class_names
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


def evaluate_final(params: Params, model: str, seed: int, *, track: bool = True) -> dict[str, Any]:
    return evaluate_run(params, final_spec(params, model, seed), track=track)


def is_done(params: Params, spec: RunSpec) -> bool:
    """Neither training nor evaluation of ``spec`` is due: its checkpoint finished under the
    current run key, and its report was written under that key."""
    key = runs.run_key(params, spec)
    return (
        is_finished(spec.run_dir(params), key, params.train.epochs)
        and _report_key(spec.report_path(params)) == key
    )


# ---------------------------------------------------------------------------------------
# a seed of protocol.seeds that a dataset's own list leaves out


def unlisted_seed(params: Params, seed: int) -> str | None:
    """Why ``seed`` is not run on this dataset (None: it is). ``dvc.yaml`` generates the
    train, evaluate and ablation stages over the root ``protocol.seeds`` for every dataset;
    a dataset whose entry narrows ``protocol.seeds`` (the paper's two seeds for DAFB, Food
    and iNat17) runs only its own."""
    if seed in params.protocol.seeds:
        return None
    return (
        f"{params.data.dataset}: seed {seed} is not in this dataset's protocol.seeds "
        f"{params.protocol.seeds}; not run (its outputs say so)"
    )


def skip_unlisted_seed(
    params: Params, spec: RunSpec, *, train: bool = True, evaluate: bool = True
) -> str | None:
    """For a seed :func:`unlisted_seed` leaves out, write the stage's outputs empty but
    valid (``skipped.json`` in the run folder and an empty curve; a report naming the
    reason, a per-class table of no row and a blank explanation image), so the DVC stage
    completes and trains nothing; returns the reason (None: the seed runs, nothing written)."""
    reason = unlisted_seed(params, spec.seed)
    if reason is None:
        return None
    if train:
        atomic_write_json(spec.run_dir(params) / "skipped.json", {"skipped": reason})
        atomic_write_json(spec.curve_path(params), [])
    if evaluate:
        import numpy as np
        from PIL import Image

        report = {"dataset": params.data.dataset, "model": spec.name, "seed": spec.seed}
        atomic_write_json(spec.report_path(params), {**report, "skipped": reason})
        none = np.zeros(0, dtype=int)
        write_per_class(per_class_table(none, none, []), spec.per_class_path(params))
        spec.explain_path(params).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (1, 1), "white").save(spec.explain_path(params))
    return reason


# ---------------------------------------------------------------------------------------
# ablation variants


def variant_params(params: Params, name: str) -> Params:
    """The params of ablation variant ``name``: the tree with its overrides applied."""
    if name not in params.ablations.variants:
        raise ParamsError(
            f"unknown ablation variant {name!r}; defined: {sorted(params.ablations.variants)} (ablations.variants)"
        )
    overrides = params.ablations.variants[name].set
    return params.with_overrides(overrides, source=f"ablations.variants.{name}.set")


def variant_spec(params: Params, name: str, seed: int) -> RunSpec:
    """The run of ablation variant ``name`` with ``seed``, at its model's searched LR."""
    model = params.ablations.variants[name].model
    return RunSpec(model=model, seed=seed, lr=chosen_lr(params, model), kind="ablation", variant=name)


def run_variant(params: Params, name: str, seed: int, *, track: bool = True) -> dict[str, Any]:
    """Train and evaluate one ablation variant with ``seed`` (its model's searched LR)."""
    vparams = variant_params(params, name)  # raises for an unknown name
    spec = variant_spec(params, name, seed)
    train_run(vparams, spec, track=track)
    return evaluate_run(vparams, spec, track=track)


# ---------------------------------------------------------------------------------------
# the aggregate


def current_report(params: Params, spec: RunSpec) -> dict[str, Any]:
    """The evaluation report of ``spec``, refused (:class:`RunError`, one line) unless it
    was computed for the run's current key: a report of an earlier configuration (other
    data, backbone, code or params) is never averaged with today's."""
    path = spec.report_path(params)
    (report,) = load_reports([path])
    key = runs.run_key(params, spec)
    if report.get("run_key") != key:
        raise RunError(
            f"{path}: computed for run key {report.get('run_key')}, but the run's current key "
            f"is {key} (its data, backbone, code or params changed since); re-run its train "
            "and evaluate stages (dvc repro)"
        )
    return report


def aggregate_reports(params: Params, *, track: bool = True) -> list[Path]:
    """Write ``results.json``, ``results.md`` and ``results.tex`` under ``reports/``, and the
    table's rows for ``dvc plots`` (``reports/plots/results.json``).

    ``results.json``: ``{dataset: {model: {top1_mean, top1_std, seeds, lr}}}`` for the main
    models (Table 4); ablation variants are under ``{dataset: {"ablations": {variant: ...}}}``.
    The plot's rows: ``{run: "<dataset>/<model>", dataset, model, top1_mean, top1_std}``.
    """
    models, seeds = list(params.protocol.models), list(params.protocol.seeds)
    main, variant_reports, ablation, lr_reports = [], [], {}, []
    for dataset in params.data.datasets:
        p = for_dataset(params, dataset)  # its own protocol.seeds
        main += [current_report(p, final_spec(p, m, s)) for m in models for s in p.protocol.seeds]
        variants = [
            current_report(variant_params(p, v), variant_spec(p, v, s))
            for v in params.ablations.variants
            for s in p.protocol.seeds
        ]
        variant_reports += variants
        ablation[dataset] = aggregate(variants).get(dataset, {}) if variants else {}
        lr_reports += [
            json.loads(runs.lr_report(p, m).read_text())
            for m in models
            if runs.lr_report(p, m).is_file()
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
        cells = {**table4.get(dataset, {}), **ablation.get(dataset, {})}
        for spec in params.ablations.tables.values():
            md += [ablation_table(spec, cells, dataset)]
    loc = localisation_table(main + variant_reports)
    if loc:
        md += ["## Where the crop lands (test split; GLS boxes for models without a crop)", "", loc]
    lrs = lr_table(lr_reports)
    if lrs:
        md += ["## LR search (val split)", "", lrs]
    out = runs.results_paths(params)
    bars = [
        {"run": f"{dataset}/{model}", "dataset": dataset, "model": model,
         "top1_mean": entry["top1_mean"], "top1_std": entry["top1_std"]}
        for dataset, per_model in table4.items()
        for model, entry in per_model.items()
    ]  # fmt: skip
    paths = [
        atomic_write_json(out["json"], results),
        atomic_write_text(out["md"], "\n".join(md)),
        atomic_write_text(out["tex"], render_table(table4, models, fmt="latex")),
        atomic_write_json(out["plot"], bars),
    ]
    if track:
        from glsim.tracking.mlflow import CONTENT_TAG, Tracker, content_digest, logged_before

        logged = {"datasets": list(params.data.datasets), "models": models, "seeds": seeds}
        tags = {"stage": "aggregate", CONTENT_TAG: content_digest(*paths, extra=logged)}
        if logged_before(params.base.experiment, tags):  # the same tables logged already
            return paths
        with Tracker(experiment=params.base.experiment, run_name="aggregate", tags=tags) as tracker:
            tracker.log_params(logged)
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
