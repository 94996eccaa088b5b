"""The final and ablation runs: one seed of a model at its chosen LR, or of an ablation
variant (its model's chosen LR, its overrides of the params tree), trained and evaluated.

:func:`train_run` (the one trainer every kind goes through: keyed, resumable, skipped when
finished) is :func:`glsim.train.run.train_run`. Under torchrun every rank calls it inside
:func:`torchrun_rank`. A run whose loss stops being finite raises :class:`TrainingDiverged`
(a retry would diverge again)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from glsim.config import Params
from glsim.eval.evaluate import per_class_table, write_per_class
from glsim.protocol.evaluate import evaluate_run
from glsim.protocol.specs import final_spec, unlisted_seed, variant_params, variant_spec
from glsim.runs import RunSpec
from glsim.train import distributed
from glsim.train.loop import TrainingDiverged
from glsim.train.run import train_run
from glsim.utils import atomic_write_json

__all__ = [
    "TrainingDiverged", "evaluate_final", "run_variant", "skip_unlisted_seed", "torchrun_rank",
    "train_final", "train_run",
]  # fmt: skip


def train_final(params: Params, model: str, seed: int, *, track: bool = True) -> Path:
    """Train (or resume, or skip when finished) the final run of ``model`` with ``seed``."""
    return train_run(params, final_spec(params, model, seed), track=track)


def evaluate_final(params: Params, model: str, seed: int, *, track: bool = True) -> dict[str, Any]:
    return evaluate_run(params, final_spec(params, model, seed), track=track)


def run_variant(params: Params, name: str, seed: int, *, track: bool = True) -> dict[str, Any]:
    """Train and evaluate one ablation variant with ``seed`` (its model's searched LR)."""
    vparams = variant_params(params, name)  # raises for an unknown name
    spec = variant_spec(params, name, seed)
    train_run(vparams, spec, track=track)
    return evaluate_run(vparams, spec, track=track)


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


@contextmanager
def torchrun_rank() -> Iterator[bool]:
    """Around a training that may run under torchrun: yields whether this process is rank 0
    (what it prints, it prints once, not once per rank), and leaves the process group on the
    way out (NCCL warns of a leak otherwise). Without torchrun: True, and nothing to leave."""
    try:
        yield distributed.from_env().is_main
    finally:
        distributed.teardown()
