"""What the flows add to :mod:`glsim.protocol`: one training run of any kind, named by the
coordinates a flow run carries (kind, model or variant, seed, LR), whether it is done, and
doing it. Every stage body, path and run key is the protocol's (the same functions the DVC
stages of ``pipelines/`` call), so a step done by a flow leaves exactly the files the stage
leaves, and either side skips the other's finished runs.

``params`` is always one dataset's tree (:func:`glsim.protocol.entry.resolve`, as a stage
script resolves it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from glsim.protocol import specs
from glsim.protocol.entry import Params, ParamsError, resolve
from glsim.protocol.specs import RunSpec

Kind = Literal["pretrain", "lrsearch", "final", "ablation"]
KINDS: tuple[str, ...] = ("pretrain", "lrsearch", "final", "ablation")


def choose_lr(params: Params, model: str) -> dict[str, Any]:
    """``search_lr``'s report, from the val reports its LR runs (trained here as runs of
    their own) wrote under their run keys; with an empty grid, ``train.lr``."""
    from glsim.protocol.lr_search import check_search, record_lr_choice

    check_search(params, model)
    return record_lr_choice(params, model, specs.search_val_top1(params, model))


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
        return specs.search_params(params), specs.search_spec(params, name, lr)
    if kind == "final":
        return params, specs.final_spec(params, name, seed)
    if kind == "ablation":
        vparams = specs.variant_params(params, name)  # raises for an unknown variant
        return vparams, specs.variant_spec(params, name, seed)
    raise ValueError(f"unknown run kind {kind!r}; one of {KINDS}")


def is_done(params: Params, kind: str, name: str, seed: int, lr: float | None) -> bool:
    """The run finished and was evaluated under its current run key (pretraining: under
    its own key), so neither training nor evaluation is due."""
    from glsim.protocol import done

    if kind == "pretrain":
        return done.pretrain_done(params)
    return done.is_done(*run_of(params, kind, name, seed, lr))


PROCS_ENV = "GLSIM_PROCS_PER_RUN"


def procs_per_run() -> int:
    """Processes (GPUs) one training run takes on this worker: ``GLSIM_PROCS_PER_RUN``
    (default 1). Above 1 the run is trained by ``torchrun`` with DDP and holds that many
    slots of the worker's ``gpu-<id>`` limit."""
    import os

    value = os.environ.get(PROCS_ENV, "1")
    try:
        procs = int(value)
    except ValueError:
        procs = 0
    if procs < 1:
        raise ParamsError(f"{PROCS_ENV}={value!r} is not a process count; set it to 1 or more")
    return procs


def train(
    params: Params, kind: str, name: str, seed: int, lr: float | None, *, track: bool = True
) -> Path:
    """Train (or resume, or skip when finished) one run in this process; its run folder."""
    from glsim.protocol.train import train_run

    return train_run(*run_of(params, kind, name, seed, lr), track=track)


def torchrun_train(request: dict[str, Any], nproc: int, *, timeout: float | None = None) -> None:
    """Train one run with ``torchrun --standalone --nproc_per_node nproc`` (DDP: NCCL on a
    node's GPUs, gloo on CPU); returns when every rank has finished. ``request`` holds the
    run's coordinates (``params_file``, ``overrides``, ``dataset``, ``kind``, ``name``,
    ``seed``, ``lr``, ``track``), the same a training flow run carries.

    A rank that stops on a diverged run or bad input appends its record to the file
    ``GLSIM_ERROR_RECORD`` names (:mod:`glsim.errors`); the first one written is raised
    here as the same exception (``TrainingDiverged``, ``RunClaimed``, ``ParamsError``, ...),
    so the flow's retry policy reads it as it reads a run trained in its own process. A
    rank that failed without a record is a :class:`~glsim.errors.CommandError` naming the
    exit status."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    from glsim.errors import ERROR_RECORD_ENV, CommandError, error_of, read_error_records

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "flows.steps", json.dumps(request),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="glsim-torchrun-") as tmp:
        record = Path(tmp) / "errors.jsonl"
        env = {**os.environ, ERROR_RECORD_ENV: str(record)}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        if proc.returncode == 0:
            return
        records = read_error_records(record)
    if records:
        raise error_of(records[0])
    raise CommandError(
        f"torchrun training of {request.get('name')} failed: exit status {proc.returncode}"
    )


def train_and_evaluate(
    params: Params,
    kind: str,
    name: str,
    seed: int,
    lr: float | None,
    *,
    track: bool = True,
    request: dict[str, Any] | None = None,
    nproc: int = 1,
) -> dict[str, Any]:
    """Train (or resume, or skip when finished) and evaluate one run through the protocol's
    own functions; returns the evaluation report (the pretraining report for ``pretrain``).

    With ``nproc > 1`` the training is :func:`torchrun_train` of ``request`` (the run's
    coordinates); the evaluation then runs here, in one process, on the checkpoint rank 0
    wrote. Pretraining always runs in one process.
    """
    from glsim.protocol import done
    from glsim.protocol.evaluate import evaluate_run

    if kind == "pretrain":
        from glsim.protocol.pretrain import pretrain

        return pretrain(params)
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; one of {KINDS}")
    run_params, spec = run_of(params, kind, name, seed, lr)
    if nproc > 1 and not done.is_done(run_params, spec):
        if request is None:
            raise ValueError("a torchrun training needs the run's request (its coordinates)")
        torchrun_train(request, nproc)
    else:
        train(params, kind, name, seed, lr, track=track)
    return evaluate_run(run_params, spec, track=track)


def _torchrun_main(argv: list[str]) -> None:
    """Entry point of every rank :func:`torchrun_train` starts: train one run, then leave
    the process group. Input errors are one ``error:`` line, exit status 2 (as stages) and a
    record in ``GLSIM_ERROR_RECORD``'s file."""
    import json

    from glsim.errors import guarded
    from glsim.protocol.entry import apply_profile
    from glsim.protocol.train import torchrun_rank

    def body() -> None:
        r = json.loads(argv[0])
        params = resolve(r["params_file"], r.get("overrides"), r.get("dataset"))
        apply_profile(params.base.numerics)  # a rank started without the pins re-executes
        with torchrun_rank():
            train(params, r["kind"], r["name"], int(r.get("seed", 0)), r.get("lr"),
                  track=bool(r.get("track", True)))  # fmt: skip

    raise SystemExit(guarded(body))


if __name__ == "__main__":
    import sys

    import glsim  # noqa: F401  (telemetry switches before any other import)

    _torchrun_main(sys.argv[1:])
