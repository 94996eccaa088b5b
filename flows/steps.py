"""The protocol's steps as plain functions of a resolved params tree, for the flows.

Every function here is a thin call into the library and mirrors one DVC stage script of
``pipelines/`` line for line (same calls, same arguments, same outputs), so a step done
by a flow leaves exactly the files the stage leaves, and either side skips the other's
finished runs. What the library lacks is kept here, small, until it moves into
:mod:`glsim.protocol` (marked ``# -> glsim.protocol``): the per-LR split of
:func:`glsim.protocol.search_lr` (the flows train each LR as its own run), and the
stage bodies that live in ``pipelines/`` only.

``params`` is always one dataset's tree: :func:`resolve` (``load_params`` + ``for_dataset``
+ ``check_params``, as ``pipelines/_common.py`` does).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from glsim import runs
from glsim.config import Params, for_dataset, load_params
from glsim.errors import RunError
from glsim.protocol import check_params, chosen_lr, evaluate_run, final_spec, variant_params
from glsim.runs import RunSpec

Kind = Literal["pretrain", "lrsearch", "final", "ablation"]
KINDS: tuple[str, ...] = ("pretrain", "lrsearch", "final", "ablation")


def resolve(
    params_file: str | Path, overrides: dict[str, Any] | None, dataset: str | None
) -> Params:
    """One dataset's params, as a stage script resolves them (``--params``/``--set``/``--dataset``)."""
    params = load_params(params_file, overrides or None)
    return check_params(for_dataset(params, dataset or params.data.dataset))


# ---------------------------------------------------------------------------------------
# data stages (pipelines/prepare.py, shard.py, validate.py, probe.py)  # -> glsim.protocol


def prepare(params: Params) -> Path:
    from glsim.data.registry import prepare_dataset

    d = params.data
    return prepare_dataset(d.dataset_source, d.raw_dir, name=d.dataset, params=params, force=True)


def shard(params: Params) -> dict[str, dict[str, Any]]:
    from glsim.data.lrsearch import write_lr_search_shards
    from glsim.data.registry import get_dataset
    from glsim.data.shards import write_shards

    d = params.data
    manifest, out = runs.manifest_path(params), runs.shards_dir(params)
    limits = dict(
        max_count=d.shard_max_count,
        max_bytes=d.shard_max_bytes,
        workers=max(1, min(4, os.cpu_count() or 1)),
    )
    final = write_shards(manifest, out, **limits)
    search = write_lr_search_shards(
        manifest, runs.shards_dir(params, "lrsearch"), seed=params.protocol.search_seed,
        large=get_dataset(d.dataset_source).large, **limits,
    )  # fmt: skip
    return {"final": final, "lrsearch": search}


def validate(params: Params) -> str:
    from glsim.validation.stage import validate_and_track

    return validate_and_track(params).summary()


def probe(params: Params) -> dict[str, Any]:
    from glsim.eval.localisation import probe_backbone
    from glsim.utils import atomic_write_json

    report = probe_backbone(params)
    atomic_write_json(runs.probe_report(params), report)
    return report


# ---------------------------------------------------------------------------------------
# pretraining (pipelines/pretrain.py)


def pretrain(params: Params) -> dict[str, Any]:
    from glsim.config import write_resolved
    from glsim.train.pretrain import pretrain_backbone

    work = runs.pretrain_dir(params)
    write_resolved(params, work)
    return pretrain_backbone(params, work_dir=work, report_path=runs.pretrain_report(params))


def pretrain_done(params: Params) -> bool:
    """The backbone file, its report and a checkpoint at the last epoch exist.

    Pretraining has no run key in the library (``pretrain_backbone`` passes none to ``fit``),
    so this is not keyed by configuration, as ``dvc repro``'s rerun of the stage (which
    resumes the finished checkpoint) is not either."""
    from glsim.train.checkpoint import CHECKPOINT_NAME, read_checkpoint

    ckpt = runs.pretrain_dir(params) / CHECKPOINT_NAME
    if not (
        ckpt.is_file()
        and Path(params.pretrain.output).is_file()
        and runs.pretrain_report(params).is_file()
    ):
        return False
    return read_checkpoint(ckpt)["state"]["epoch"] >= params.pretrain.epochs


# ---------------------------------------------------------------------------------------
# the LR search, one run per LR  # -> glsim.protocol (search_lr = these three)


def search_params(params: Params) -> Params:
    """The tree an LR-search run trains with (``protocol.search_epochs``), as in ``search_lr``."""
    epochs = params.protocol.search_epochs or params.train.epochs
    return params.with_overrides({"train.epochs": epochs}, source="protocol.search_epochs")


def search_spec(params: Params, model: str, lr: float) -> RunSpec:
    return RunSpec(model=model, seed=params.protocol.search_seed, lr=lr, kind="lrsearch")


def record_lr_choice(params: Params, model: str) -> dict[str, Any]:
    """``search_lr``'s report from the val reports its runs wrote (``val.json``), written
    where ``search_lr`` writes it; with an empty grid, ``search_lr`` itself (trains nothing)."""
    from glsim.data.shards import INDEX_NAME, ShardError, read_index
    from glsim.models.registry import check_model_name
    from glsim.protocol import search_lr
    from glsim.utils import atomic_write_json

    check_model_name(model)
    grid = list(params.protocol.lr_grid)
    if not grid:
        return search_lr(params, model, track=False)
    search_shards = runs.shards_dir(params, "lrsearch")
    index = search_shards / INDEX_NAME
    if index.is_file() and not read_index(search_shards)["splits"]["test"]["count"]:
        raise ShardError(
            f"{search_shards}: the LR search's val part is empty (no class of the train "
            "split has two or more images); add train images, or set "
            "protocol.lr_grid: [] to train with train.lr"
        )
    sp = search_params(params)
    val: dict[str, float] = {}
    for lr in grid:
        path = search_spec(params, model, lr).report_path(sp)
        if not path.is_file():
            raise RunError(
                f"{path} missing: the LR-search run of {model!r} at lr {lr:g} has not finished"
            )
        val[f"{lr:g}"] = json.loads(path.read_text())["top1"]
    best = max(grid, key=lambda lr: (val[f"{lr:g}"], -grid.index(lr)))
    report = {
        "dataset": params.data.dataset, "model": model, "grid": grid, "chosen_lr": best,
        "searched": True, "val_top1": val, "epochs": sp.train.epochs,
        "seed": params.protocol.search_seed,
    }  # fmt: skip
    atomic_write_json(runs.lr_search_dir(params, model) / "search.json", report)
    atomic_write_json(runs.lr_report(params, model), report)
    return report


# ---------------------------------------------------------------------------------------
# one training run of any kind: what it is, whether it is done, doing it


def run_of(
    params: Params, kind: str, name: str, seed: int, lr: float | None
) -> tuple[Params, RunSpec]:
    """The params and spec of one run, as the protocol function that trains it builds them.

    ``name`` is the model (``lrsearch``, ``final``) or the ablation variant (``ablation``);
    ``lr`` is given for ``lrsearch`` only (the others train at their model's chosen LR).
    """
    if kind == "lrsearch":
        if lr is None:
            raise ValueError("an lrsearch run needs lr (one of protocol.lr_grid)")
        return search_params(params), search_spec(params, name, lr)
    if kind == "final":
        return params, final_spec(params, name, seed)
    if kind == "ablation":
        vparams = variant_params(params, name)  # raises for an unknown variant
        model = params.ablations.variants[name].model
        spec = RunSpec(
            model=model, seed=seed, lr=chosen_lr(params, model), kind="ablation", variant=name
        )
        return vparams, spec
    raise ValueError(f"unknown run kind {kind!r}; one of {KINDS}")


def is_done(params: Params, kind: str, name: str, seed: int, lr: float | None) -> bool:
    """The run finished under its current run key and was evaluated after it finished
    (the report is not older than the checkpoint), so neither training nor evaluation is due."""
    if kind == "pretrain":
        return pretrain_done(params)
    from glsim.train.checkpoint import CHECKPOINT_NAME
    from glsim.train.run import is_finished

    p, spec = run_of(params, kind, name, seed, lr)
    run_dir, report = spec.run_dir(p), spec.report_path(p)
    if not is_finished(run_dir, runs.run_key(p, spec), p.train.epochs):
        return False
    evaluated = (
        report.is_file() and report.stat().st_mtime >= (run_dir / CHECKPOINT_NAME).stat().st_mtime
    )
    return evaluated


def train_and_evaluate(
    params: Params, kind: str, name: str, seed: int, lr: float | None, *, track: bool = True
) -> dict[str, Any]:
    """Train (or resume, or skip when finished) and evaluate one run through the protocol's
    own functions; returns the evaluation report (the pretraining report for ``pretrain``)."""
    from glsim.protocol import evaluate_final, run_variant, train_final
    from glsim.train.run import train_run

    if kind == "pretrain":
        return pretrain(params)
    if kind == "lrsearch":
        p, spec = run_of(params, kind, name, seed, lr)
        train_run(p, spec, track=track)
        return evaluate_run(p, spec, track=track)
    if kind == "final":
        train_final(params, name, seed, track=track)
        return evaluate_final(params, name, seed, track=track)
    if kind == "ablation":
        return run_variant(params, name, seed, track=track)
    raise ValueError(f"unknown run kind {kind!r}; one of {KINDS}")
