"""The LR search of one model: every LR of ``protocol.lr_grid`` trained on the search
split's train part (seed ``protocol.search_seed``) and scored on its val part; the best is
kept (ties: the earlier LR in the grid). Runs are keyed, so a rerun after a kill, or after an
LR was added to the grid, trains only what is missing.

:func:`search_lr` does it all in one process (the ``lr_search`` stage); the flows train each
LR as a run of its own, then call :func:`check_search` before and :func:`record_lr_choice`
with :func:`glsim.protocol.specs.search_val_top1` after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glsim import runs
from glsim.config import Params
from glsim.data.shards import INDEX_NAME, ShardError, read_index
from glsim.errors import RunError
from glsim.models.registry import check_model_name
from glsim.protocol.evaluate import evaluate_run
from glsim.protocol.specs import search_params, search_spec
from glsim.train.run import train_run
from glsim.utils import atomic_write_json


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
