"""The paper's protocol (App. C) over single runs: LR search, final runs, ablation variants.

* :func:`search_lr`: for one model, train every LR of ``protocol.lr_grid`` on the search
  split's train part (seed ``protocol.search_seed``), score each on its val part, keep the
  best (ties: the earlier LR in the grid). Runs are keyed, so a rerun after a kill, or
  after an LR was added to the grid, trains only what is missing.
* :func:`chosen_lr`: what a final or ablation run of that model trains with.
* :func:`variant_params` / :func:`run_variant`: an ablation variant is a model plus dotted
  overrides of the params tree, trained and evaluated like a final run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glsim.config import Params, ParamsError, dotted_to_nested, params_from_dict
from glsim.errors import RunError
from glsim.eval.evaluate import evaluate_run
from glsim.models.registry import check_model_name
from glsim.data.shards import INDEX_NAME, ShardError, read_index
from glsim.train.run import RunSpec, shards_dir, train_run
from glsim.utils import atomic_write_json


def lr_report_path(params: Params, model: str) -> Path:
    return params.dataset_reports / "lr_search" / f"{model}.json"


def ablation_report_path(params: Params, variant: str, seed: int) -> Path:
    return params.dataset_reports / "ablation" / variant / f"seed{seed}.json"


def _with(params: Params, overrides: dict[str, Any], source: str) -> Params:
    from glsim.config import _deep_merge

    data = _deep_merge(params.model_dump(mode="json"), dotted_to_nested(overrides))
    return params_from_dict(data, source=source)


def _val_count(search_shards: Path) -> int:
    """Images in the LR search's val part (written as the ``test`` split of its shards)."""
    return int(read_index(search_shards)["splits"]["test"]["count"])


def search_lr(params: Params, model: str, *, track: bool = True) -> dict[str, Any]:
    """Run the LR search for ``model`` and write its report (see the module docstring)."""
    check_model_name(model)
    grid = list(params.protocol.lr_grid)
    report: dict[str, Any] = {"dataset": params.data.dataset, "model": model, "grid": grid}
    if not grid:
        report.update(chosen_lr=params.train.lr, searched=False, val_top1={})
    else:
        search_shards = shards_dir(params, "lrsearch")
        if (search_shards / INDEX_NAME).is_file() and not _val_count(search_shards):
            raise ShardError(
                f"{shards_dir(params, 'lrsearch')}: the LR search's val part is empty (no class "
                "of the train split has two or more images); add train images, or set "
                "protocol.lr_grid: [] to train with train.lr"
            )
        epochs = params.protocol.search_epochs or params.train.epochs
        search_params = _with(params, {"train.epochs": epochs}, "protocol.search_epochs")
        val: dict[str, float] = {}
        for lr in grid:
            spec = RunSpec(model=model, seed=params.protocol.search_seed, lr=lr, kind="lrsearch")
            run_dir = train_run(search_params, spec, track=track)
            val[f"{lr:g}"] = evaluate_run(search_params, spec, run_dir / "val.json", track=track)[
                "top1"
            ]
        best = max(grid, key=lambda lr: (val[f"{lr:g}"], -grid.index(lr)))
        report.update(
            chosen_lr=best,
            searched=True,
            val_top1=val,
            epochs=epochs,
            seed=params.protocol.search_seed,
        )
    # the stage's run folder exists even when nothing was trained (empty grid)
    (params.base.runs_dir / params.data.dataset / "lrsearch" / model).mkdir(
        parents=True, exist_ok=True
    )
    atomic_write_json(
        params.base.runs_dir / params.data.dataset / "lrsearch" / model / "search.json", report
    )
    atomic_write_json(lr_report_path(params, model), report)
    return report


def chosen_lr(params: Params, model: str) -> float:
    """The LR the search picked for ``model`` (``train.lr`` when the grid is empty)."""
    check_model_name(model)
    if not params.protocol.lr_grid:
        return params.train.lr
    path = lr_report_path(params, model)
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


def variant_params(params: Params, name: str) -> Params:
    """The params of ablation variant ``name``: the tree with its overrides applied."""
    if name not in params.ablations.variants:
        raise ParamsError(
            f"unknown ablation variant {name!r}; defined: {sorted(params.ablations.variants)} (ablations.variants)"
        )
    return _with(params, params.ablations.variants[name].set, f"ablations.variants.{name}.set")


def run_variant(params: Params, name: str, seed: int, *, track: bool = True) -> dict[str, Any]:
    """Train and evaluate one ablation variant with ``seed`` (its model's searched LR)."""
    vparams = variant_params(params, name)  # raises for an unknown name
    variant = params.ablations.variants[name]
    spec = RunSpec(
        model=variant.model,
        seed=seed,
        lr=chosen_lr(params, variant.model),
        kind="ablation",
        variant=name,
    )
    train_run(vparams, spec, track=track)
    return evaluate_run(vparams, spec, ablation_report_path(params, name, seed), track=track)
