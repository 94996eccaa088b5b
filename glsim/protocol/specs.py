"""Which runs the protocol makes, with which params and LR, and what they reported.

* :func:`search_params` / :func:`search_spec`: an LR-search run of ``protocol.lr_grid``
  (seed ``protocol.search_seed``, ``protocol.search_epochs``); :func:`search_val_top1`: the
  val top-1 each one reported under its run key.
* :func:`chosen_lr`: what a final or ablation run of a model trains with (the search's
  choice; ``train.lr`` with an empty grid); :func:`final_spec`.
* :func:`variant_params` / :func:`variant_spec`: an ablation variant is a model plus dotted
  overrides of the params tree, at its model's chosen LR.
* :func:`unlisted_seed`: a seed of the root ``protocol.seeds`` a dataset leaves out.

Torch-free: ``glsim plan`` and the registry's candidate read these too.
"""

from __future__ import annotations

import json
from pathlib import Path

from glsim import runs
from glsim.config import Params, ParamsError
from glsim.errors import RunError
from glsim.models.registry import check_model_name
from glsim.runs import RunSpec


def report_key(path: Path) -> str | None:
    """The ``run_key`` a JSON report was written under (None: no report, or none in it)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("run_key")
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------
# the LR search and the chosen LR


def search_params(params: Params) -> Params:
    """The tree an LR-search run trains with: ``train.epochs`` is ``protocol.search_epochs``
    (when set)."""
    epochs = params.protocol.search_epochs or params.train.epochs
    return params.with_overrides({"train.epochs": epochs}, source="protocol.search_epochs")


def search_spec(params: Params, model: str, lr: float) -> RunSpec:
    """The LR-search run of ``model`` at ``lr`` (seed ``protocol.search_seed``)."""
    return RunSpec(model=model, seed=params.protocol.search_seed, lr=lr, kind="lrsearch")


def search_val_top1(params: Params, model: str) -> dict[str, float]:
    """Each LR-search run's val top-1 (keys ``f"{lr:g}"``), read from the val report it
    wrote, for callers that train and evaluate every LR as a run of its own. A run whose
    report is missing or was written under another run key raises :class:`RunError`."""
    sp = search_params(params)
    val: dict[str, float] = {}
    for lr in params.protocol.lr_grid:
        spec = search_spec(params, model, lr)
        path = spec.report_path(sp)
        if report_key(path) != runs.run_key(sp, spec):
            raise RunError(
                f"{path}: the LR-search run of {model!r} at lr {lr:g} has not been trained and "
                "evaluated under the current configuration; run it first"
            )
        val[f"{lr:g}"] = json.loads(path.read_text())["top1"]
    return val


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


def final_spec(params: Params, model: str, seed: int) -> RunSpec:
    """The final run of ``model`` with ``seed`` at its chosen LR."""
    return RunSpec(model=model, seed=seed, lr=chosen_lr(params, model))


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
    return RunSpec(
        model=model, seed=seed, lr=chosen_lr(params, model), kind="ablation", variant=name
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
