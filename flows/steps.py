"""What the flows add to :mod:`glsim.protocol`: one training run of any kind, named by the
coordinates a flow run carries (kind, model or variant, seed, LR), whether it is done, and
doing it. Every stage body, path and run key is the protocol's (the same functions the DVC
stages of ``pipelines/`` call), so a step done by a flow leaves exactly the files the stage
leaves, and either side skips the other's finished runs.

``params`` is always one dataset's tree: :func:`resolve` (``load_params`` + ``for_dataset``
+ ``check_params``, as ``pipelines/_common.py`` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from glsim import protocol
from glsim.config import Params, for_dataset, load_params
from glsim.runs import RunSpec

Kind = Literal["pretrain", "lrsearch", "final", "ablation"]
KINDS: tuple[str, ...] = ("pretrain", "lrsearch", "final", "ablation")


def resolve(
    params_file: str | Path, overrides: dict[str, Any] | None, dataset: str | None
) -> Params:
    """One dataset's params, as a stage script resolves them (``--params``/``--set``/``--dataset``)."""
    params = load_params(params_file, overrides or None)
    return protocol.check_params(for_dataset(params, dataset or params.data.dataset))


def choose_lr(params: Params, model: str) -> dict[str, Any]:
    """``search_lr``'s report, from the val reports its LR runs (trained here as runs of
    their own) wrote under their run keys; with an empty grid, ``train.lr``."""
    protocol.check_search(params, model)
    return protocol.record_lr_choice(params, model, protocol.search_val_top1(params, model))


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
        return protocol.search_params(params), protocol.search_spec(params, name, lr)
    if kind == "final":
        return params, protocol.final_spec(params, name, seed)
    if kind == "ablation":
        vparams = protocol.variant_params(params, name)  # raises for an unknown variant
        return vparams, protocol.variant_spec(params, name, seed)
    raise ValueError(f"unknown run kind {kind!r}; one of {KINDS}")


def is_done(params: Params, kind: str, name: str, seed: int, lr: float | None) -> bool:
    """The run finished and was evaluated under its current run key (pretraining: under
    its own key), so neither training nor evaluation is due."""
    if kind == "pretrain":
        return protocol.pretrain_done(params)
    return protocol.is_done(*run_of(params, kind, name, seed, lr))


def train_and_evaluate(
    params: Params, kind: str, name: str, seed: int, lr: float | None, *, track: bool = True
) -> dict[str, Any]:
    """Train (or resume, or skip when finished) and evaluate one run through the protocol's
    own functions; returns the evaluation report (the pretraining report for ``pretrain``)."""
    from glsim.train.run import train_run

    if kind == "pretrain":
        return protocol.pretrain(params)
    if kind == "lrsearch":
        p, spec = run_of(params, kind, name, seed, lr)
        train_run(p, spec, track=track)
        return protocol.evaluate_run(p, spec, track=track)
    if kind == "final":
        protocol.train_final(params, name, seed, track=track)
        return protocol.evaluate_final(params, name, seed, track=track)
    if kind == "ablation":
        return protocol.run_variant(params, name, seed, track=track)
    raise ValueError(f"unknown run kind {kind!r}; one of {KINDS}")
