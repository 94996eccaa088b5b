"""One training run as its own flow run: the unit a worker on any node takes.

The sweep submits this flow as a deployment run (``glsim-train-one/train-one`` in
``prefect.yaml``) with the run's coordinates only (params file, overrides, dataset, kind,
model or variant, seed, and the LR for an LR-search run); what the run trains with comes
from the params tree through :mod:`glsim.protocol`, as in the DVC stages. While it trains
and evaluates it holds one slot of its worker's ``gpu-<worker id>`` limit
(:mod:`flows.gpu`), and it records the hold as a table artifact.

A finished run (same run key) is skipped by ``train_run``; a killed one resumes from its
``last.pt``. A diverged run ends in a ``Failed`` state named ``Diverged``, and bad input
(params, data, a missing LR-search report) in one named ``BadInput``: the sweep retries
neither (nor a cancelled run), only what may be transient (a crash, a lost node, I/O).
Every error of :func:`glsim.errors.user_errors` (a tracking server that does not answer
among them) and a full disk end the flow run in a ``Failed`` state and one ``error:`` line
in its log, as the stage scripts print it; anything else is a bug and keeps its traceback.
Prefect's engine logs the traceback of the ``FailedRun`` it raises on reading
that state; the logging config of ``scripts/prefect-logging.yml`` (which
``scripts/env.sh`` names, :mod:`glsim.prefect_logging`) drops it, so a worker's log has the
``error:`` line and Prefect's "Finished in state Failed(...)" line.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Failed, State

from flows import gpu, steps

DIVERGED = "Diverged"
BAD_INPUT = "BadInput"
FLOW_NAME = "glsim-train-one"
DEPLOYMENT = f"{FLOW_NAME}/train-one"  # prefect.yaml


class RunFailed(RuntimeError):
    """A training flow run ended without completing for a reason that may be transient."""


class RunNotRetriable(RuntimeError):
    """A training flow run failed on its input; retrying cannot help."""


def not_transient() -> tuple[type[BaseException], ...]:
    """The errors a retry cannot fix: glsim's input errors (a diverged run among them) but
    :func:`glsim.errors.retriable_errors`."""
    from glsim.errors import retriable_errors, user_errors

    transient = retriable_errors()
    return (*(e for e in user_errors() if not issubclass(e, transient)), RunNotRetriable)


def label(request: dict[str, Any]) -> str:
    """``dataset/kind/name[/lrX]/seedS``: the flow-run and task-run name of one run."""
    r = request
    if r.get("kind") == "pretrain":
        return "pretrain"
    lr = f"/lr{r['lr']:g}" if r.get("lr") is not None else ""
    return f"{r.get('dataset')}/{r.get('kind')}/{r.get('name')}{lr}/seed{r.get('seed', 0)}"


def request(
    params_file: str, overrides: dict[str, Any] | None, dataset: str, kind: str,
    name: str = "", seed: int = 0, lr: float | None = None, track: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """The parameters of one :func:`train_one` flow run (JSON: they travel to the server)."""
    if kind not in steps.KINDS:
        raise ValueError(f"unknown run kind {kind!r}; one of {steps.KINDS}")
    return dict(
        params_file=str(params_file), overrides=dict(overrides or {}), dataset=dataset,
        kind=kind, name=name, seed=seed, lr=lr, track=track,
    )  # fmt: skip


def raise_for_state(state: State, run: str) -> None:
    """Nothing for a completed run; else the error the sweep's retry policy reads."""
    if state.is_completed():
        return
    from glsim.protocol.train import TrainingDiverged

    what = f"{run}: flow run ended {state.name}: {state.message}"
    if state.name == DIVERGED:
        raise TrainingDiverged(what)
    if state.name == BAD_INPUT or state.is_cancelled():  # a cancelled run was meant to stop
        raise RunNotRetriable(what)
    raise RunFailed(what)


@flow(name=FLOW_NAME, flow_run_name=lambda: _flow_run_name(), log_prints=True)
def train_one(
    params_file: str,
    dataset: str,
    kind: str,
    name: str = "",
    seed: int = 0,
    lr: float | None = None,
    overrides: dict[str, Any] | None = None,
    track: bool = True,
    gpu_limit: bool = True,
) -> dict[str, Any] | State:
    """Train (or resume, or skip when finished) and evaluate one run on this worker.

    Args:
        params_file: the params file (relative to the deployment's working directory).
        dataset: a ``data.datasets`` entry.
        kind: ``lrsearch``, ``final``, ``ablation`` or ``pretrain``.
        name: the model (``lrsearch``/``final``) or the ablation variant.
        seed: the run's seed (``lrsearch``: ``protocol.search_seed``).
        lr: an LR of ``protocol.lr_grid`` (``lrsearch`` only).
        overrides: dotted params overrides, as ``--set`` of a stage script.
        track: log to MLflow (``MLFLOW_TRACKING_URI``).
        gpu_limit: hold a slot of ``gpu-<worker id>`` while training.

    Returns:
        The run's evaluation report (pretraining: its report) and ``slot``, the GPU hold.
    """
    from glsim.errors import describe_os_error, user_errors
    from glsim.protocol.train import TrainingDiverged

    req = request(params_file, overrides, dataset, kind, name, seed, lr, track)
    run = label(req)
    logger = get_run_logger(FlowRunContext.get())  # this flow's, also when run inside a task
    try:
        params = steps.resolve(params_file, overrides, dataset)
        nproc = steps.procs_per_run() if kind != "pretrain" else 1
        with gpu.gpu_slot(gpu_limit, slots=nproc) as slot:
            logger.info(
                "%s: training on worker %s (limit %s, %d process%s)",
                run, slot["worker"], slot["limit"], nproc, "es" if nproc > 1 else "",
            )  # fmt: skip
            report = steps.train_and_evaluate(
                params, kind, name, seed, lr, track=track, request=req, nproc=nproc
            )
    except TrainingDiverged as err:  # loud, and never retried
        logger.error("error: %s diverged: %s", run, err)
        return Failed(name=DIVERGED, message=str(err))
    except not_transient() as err:
        logger.error("error: %s: %s", run, err)
        return Failed(name=BAD_INPUT, message=f"{type(err).__name__}: {err}")
    except user_errors() as err:  # may pass (a server back, a download, a folder released)
        logger.error("error: %s: %s", run, err)
        return Failed(message=f"{type(err).__name__}: {err}")  # the sweep retries it
    except OSError as err:  # a full disk or a permission, named; any other keeps its traceback
        described = describe_os_error(err)
        if described is None:
            raise
        logger.error("error: %s: %s", run, described)
        return Failed(message=f"{type(err).__name__}: {described}")
    if gpu_limit:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(
            [{"run": run, **slot}], key="gpu-slot", description=f"GPU slot held by {run}"
        )
    return {**report, "slot": slot}


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    return label(flow_run.parameters)
