"""The paper's protocol as a Prefect sweep over the params tree: what ``dvc repro`` runs,
spread over workers.

First the plan (:mod:`glsim.protocol.plan`: every run, images to train, GPU-hours), written to
``<runs_dir>/plan/`` and logged to MLflow. Per dataset of ``data.datasets``: ``prepare``,
``shard``, ``validate`` (in this process);
``pretrain`` once when ``pretrain.stages`` is non-empty; ``probe``. Per (dataset, model of
``protocol.models``): one run per LR of ``protocol.lr_grid``, then the choice of LR. Per
(dataset, model, seed) and (dataset, variant of ``ablations.variants``, seed): the run and
its evaluation; once a (dataset, model)'s seeds are evaluated, one seed's model is
registered as ``glsim-<dataset>-<model>`` and gets ``champion`` or ``challenger`` by
``registry.margin`` (:mod:`glsim.tracking.registry`; tracked sweeps only). Then the
aggregate (``reports/results.*``). Every step is a call into
:mod:`glsim.protocol`, the functions the stage scripts of ``pipelines/`` call (through
:mod:`flows.steps` for one training run); no recipe, path or hyperparameter is written
here.

Each training run (pretraining, LR-search, final, ablation) is its own flow run of
:func:`flows.train_one.train_one`: submitted as a deployment run (``use_deployments``, the
default), so a worker on any node takes it and holds one of its GPU slots; or, with
``use_deployments=False`` (``--local``), run here one after another, with no server
needed beyond Prefect's ephemeral one. A run that already finished under its run key and
was evaluated under it is not submitted at all; a submitted one that finished is skipped by
``train_run``; a killed one resumes from ``last.pt``.

Retries: only what may be transient (I/O, tracking, a crashed or lost worker): twice,
after a delay. A diverged run (``TrainingDiverged``) and bad input fail at once.

    python -m flows.sweep --local                 # this machine, in-process
    prefect deployment run glsim-sweep/sweep      # on the cluster (docs/operations.md)
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from flows import steps
from flows.train_one import (
    DEPLOYMENT,
    RunFailed,
    RunNotRetriable,
    label,
    not_transient,
    raise_for_state,
    request,
    train_one,
)
from glsim.errors import user_errors
from glsim.protocol import data, entry
from glsim.protocol.entry import ParamsError, apply_profile_of, params_parser, parse_sets

RETRIES = 2
RETRY_DELAY_S = 10
IN_FLIGHT = 64  # deployment runs waited on at once (threads that mostly sleep)


class SweepIncomplete(RuntimeError):
    """Some training runs, LR choices or registrations did not complete: no aggregate."""


def transient(task, task_run, state) -> bool:
    """``retry_condition_fn``: retry unless the failure is one a retry cannot fix."""
    return not isinstance(state.data, not_transient())


def _task(fn=None, **kwargs):
    options = dict(
        retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, retry_condition_fn=transient,
        cache_policy=NO_CACHE,
    )  # fmt: skip
    return task(**{**options, **kwargs})(fn) if fn else task(**{**options, **kwargs})


# ---------------------------------------------------------------------------------------
# tasks: thin calls into glsim.protocol (and flows.steps), each on one dataset's params


@_task(task_run_name="check-tracking")
def check_tracking() -> None:
    entry.check_tracking()


@_task(task_run_name="plan")
def plan(
    params_file: str, overrides: dict, datasets: list[str], throughput: str | None, track: bool
) -> str:
    """The runs the sweep will make, images and GPU-hours (``glsim plan``), logged first."""
    from glsim.protocol.plan import write_and_log_plan

    params = entry.root_params(params_file, overrides)
    paths = write_and_log_plan(
        params, datasets, throughput=throughput, source=params_file, track=track
    )
    get_run_logger().info("%s", paths["txt"].read_text())
    return str(paths["json"])


@_task(task_run_name="prepare-{dataset}")
def prepare(params_file: str, overrides: dict, dataset: str) -> str:
    return str(data.prepare(steps.resolve(params_file, overrides, dataset)))


@_task(task_run_name="shard-{dataset}")
def shard(params_file: str, overrides: dict, dataset: str) -> dict[str, int]:
    index = data.shard(steps.resolve(params_file, overrides, dataset))
    return {
        f"{part}/{split}": e["count"]
        for part, i in index.items()
        for split, e in i["splits"].items()
    }


@_task(task_run_name="validate-{dataset}")
def validate(params_file: str, overrides: dict, dataset: str) -> str:
    from glsim.protocol.validate import validate as validate_dataset

    return validate_dataset(steps.resolve(params_file, overrides, dataset)).summary()


@_task(task_run_name="probe-{dataset}")
def probe(params_file: str, overrides: dict, dataset: str) -> dict[str, Any]:
    from glsim.protocol.probe import probe as probe_backbone

    return probe_backbone(steps.resolve(params_file, overrides, dataset))


@_task(task_run_name="choose-lr-{dataset}-{model}")
def choose_lr(params_file: str, overrides: dict, dataset: str, model: str) -> float:
    report = steps.choose_lr(steps.resolve(params_file, overrides, dataset), model)
    return float(report["chosen_lr"])


@_task(task_run_name="aggregate")
def aggregate(params_file: str, overrides: dict, track: bool) -> list[str]:
    from glsim.protocol.report import aggregate_reports

    params = entry.root_params(params_file, overrides)
    return [str(p) for p in aggregate_reports(params, track=track)]


@_task(task_run_name="register-{dataset}-{model}")
def register(params_file: str, overrides: dict, dataset: str, model: str) -> dict[str, Any]:
    """Register a seed's model of ``(dataset, model)`` and move its alias (champion/challenger)."""
    from glsim.protocol.registry import register as register_model

    decision = register_model(steps.resolve(params_file, overrides, dataset), dataset, model)
    get_run_logger().info(
        "%s v%s: %s (%s)", decision["name"], decision["version"], decision["alias"],
        decision["reason"],
    )  # fmt: skip
    return decision


@_task(task_run_name="{run}")
def train(
    run: str, req: dict[str, Any], use_deployments: bool, deployment: str, poll_s: float
) -> str:
    """One training run: ``skipped`` (finished and evaluated already) or ``trained``."""
    logger = get_run_logger()
    params = steps.resolve(req["params_file"], req["overrides"], req["dataset"])
    if steps.is_done(params, req["kind"], req["name"], req["seed"], req["lr"]):
        logger.info("%s: finished under its run key and evaluated; not submitted", run)
        return "skipped"
    if use_deployments:
        state = run_on_a_worker(run, req, deployment, poll_s)
    else:  # in this process, one run at a time: no GPU limit to hold
        logger.info("%s: started here", run)
        start = time.monotonic()
        state = train_one(**req, gpu_limit=False, return_state=True)
        logger.info("%s", ended(run, state, "here", time.monotonic() - start))
    raise_for_state(state, run)
    return "trained"


def run_on_a_worker(run: str, req: dict[str, Any], deployment: str, poll_s: float) -> State:
    """Submit one run to ``deployment`` and wait for its flow run to end; its final state.

    Says when a worker starts it and when it ends, with the worker's name (Prefect's
    ``--name``), how long it ran and, when it did not complete, why: one line each in the
    sweep's log, so the sweep's shell shows every run's progress."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    submitted = run_deployment(
        deployment, parameters=req, flow_run_name=run, timeout=0, tags=["glsim", req["kind"]]
    )
    seen_running = False
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(submitted.id)
            state = flow_run.state
            worker = flow_run.labels.get("prefect.worker.name", "a worker")
            if not seen_running and flow_run.start_time:
                seen_running = True
                logger.info("%s: started on %s", run, worker)
            if state.is_final():
                took = None
                if flow_run.start_time and flow_run.end_time:
                    took = (flow_run.end_time - flow_run.start_time).total_seconds()
                logger.info("%s", ended(run, state, f"on {worker}", took))
                return state
            time.sleep(poll_s)


def ended(run: str, state: State, where: str, seconds: float | None) -> str:
    """``<run>: <state> <where> after <s> s[: <why>]``: one run's end, one line."""
    took = f" after {seconds:.0f} s" if seconds is not None else ""
    why = "" if state.is_completed() or not state.message else f": {state.message}"
    return f"{run}: {state.name} {where}{took}{why}"


# ---------------------------------------------------------------------------------------
# the sweep


@flow(name="glsim-sweep", task_runner=ThreadPoolTaskRunner(max_workers=IN_FLIGHT), log_prints=True)
def sweep(
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    datasets: list[str] | None = None,
    use_deployments: bool = True,
    deployment: str = DEPLOYMENT,
    track: bool = True,
    poll_s: float = 5.0,
    register_models: bool = True,
    throughput: str | None = None,
) -> dict[str, Any]:
    """Run the protocol over ``params_file`` (+ dotted ``overrides``, as ``--set``).

    Args:
        datasets: a subset of ``data.datasets`` (default: all); the aggregate covers all.
        use_deployments: submit each training run to ``deployment`` (workers); False runs
            them here, one at a time.
        track: log runs and the aggregate to MLflow (``MLFLOW_TRACKING_URI``), as the DVC
            stages do; validation is logged either way, as the ``validate`` stage does.
        poll_s: seconds between polls of a submitted run's state.
        register_models: with ``track``, register and promote each (dataset, model)'s
            model of one seed (the registry's rule) once its seeds are evaluated.
        throughput: a training-step throughput table (``glsim cost bench --train-step``):
            the plan written and logged before the sweep starts (``glsim plan``) then
            gives GPU-hours.

    Returns:
        ``{"trained": [...], "skipped": [...], "results": [paths], "registry": {model
        name: alias decision}}``.
    """
    logger = get_run_logger()
    overrides = dict(overrides or {})
    root = steps.resolve(params_file, overrides, None)  # raises on bad params, before any work
    names = list(datasets or root.data.datasets)
    for name in names:
        steps.resolve(params_file, overrides, name)
    src = (params_file, overrides)
    local = not use_deployments
    outcome: dict[str, PrefectFuture | str] = {}

    def run(req: dict[str, Any], wait_for: list = ()) -> Any:
        name = label(req)
        args = (name, req, use_deployments, deployment, poll_s)
        outcome[name] = train(*args) if local else train.submit(*args, wait_for=list(wait_for))
        return outcome[name]

    def start(t, *args, wait_for: list = ()) -> Any:
        return t(*args) if local else t.submit(*args, wait_for=list(wait_for))

    if track:
        check_tracking()
    plan(params_file, overrides, names, throughput, track)
    # pretraining reads nothing of the datasets: on a worker while the data is prepared
    pre = []
    if root.pretrain.stages:
        pre = [run(request(*src, root.data.dataset, "pretrain", track=track))]
    for name in names:  # here, one after another: cheap next to training
        prepare(*src, name)
        shard(*src, name)
        validate(*src, name)

    # LR search: every (dataset, model, LR) at once, then the choice per (dataset, model)
    chosen = {}
    for name in names:
        p = steps.resolve(*src, name)
        for model in p.protocol.models:
            lr_runs = [
                run(request(*src, name, "lrsearch", model, p.protocol.search_seed, lr, track), pre)
                for lr in p.protocol.lr_grid
            ]
            chosen[name, model] = start(choose_lr, *src, name, model, wait_for=lr_runs or pre)
    if pre and not local:
        wait(pre)
    for name in names:  # the pretrained backbone's boxes, while the LR search runs
        if not pre or _ok(pre[0]):
            probe(*src, name)

    # final runs per seed, then registration; ablation variants at their model's chosen LR
    registered: dict[tuple[str, str], PrefectFuture | dict] = {}
    for name in names:
        p = steps.resolve(*src, name)
        for model in p.protocol.models:
            seeds = [
                run(request(*src, name, "final", model, seed, None, track), [chosen[name, model]])
                for seed in p.protocol.seeds
            ]
            if track and register_models and seeds:
                registered[name, model] = start(register, *src, name, model, wait_for=seeds)
        for variant, v in p.ablations.variants.items():
            after = [chosen[name, v.model]] if (name, v.model) in chosen else []
            for seed in p.protocol.seeds:
                run(request(*src, name, "ablation", variant, seed, None, track), after)

    if not local:
        futures = [*outcome.values(), *chosen.values(), *registered.values()]
        wait([f for f in futures if isinstance(f, PrefectFuture)])
        failed = [n for n, f in outcome.items() if not _ok(f)]
        failed += [f"choose-lr {d}/{m}" for (d, m), f in chosen.items() if not _ok(f)]
        failed += [f"register {d}/{m}" for (d, m), f in registered.items() if not _ok(f)]
        if failed:
            raise SweepIncomplete(
                f"{len(failed)} step(s) did not complete, so no aggregate: {', '.join(failed)} "
                "(see their flow runs; rerun the sweep to retry: finished runs are skipped)"
            )
    results = aggregate(params_file, overrides, track)
    status = {n: (f.result() if isinstance(f, PrefectFuture) else f) for n, f in outcome.items()}
    summary = {
        "trained": sorted(n for n, s in status.items() if s == "trained"),
        "skipped": sorted(n for n, s in status.items() if s == "skipped"),
        "results": results,
        "registry": {
            f"{d}/{m}": (f.result() if isinstance(f, PrefectFuture) else f)
            for (d, m), f in registered.items()
        },
    }
    logger.info("sweep: %d trained, %d skipped", len(summary["trained"]), len(summary["skipped"]))
    return summary


def _ok(future: Any) -> bool:
    return not isinstance(future, PrefectFuture) or future.state.is_completed()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[params_parser()])
    p.add_argument("--dataset", action="append", help="a data.datasets entry (repeatable)")
    p.add_argument("--local", action="store_true", help="train here, not through workers")
    p.add_argument("--no-track", action="store_true")
    p.add_argument("--throughput", help="training-step images/s table: GPU-hours in the plan")
    args = p.parse_args(argv)
    try:
        overrides = parse_sets(args.set)
        # under base.numerics: portable, re-executes with the CPU code paths pinned; the
        # tasks run here (--local) or in the processes they start inherit the pins
        apply_profile_of(args.params, args.set)
    except ParamsError as err:
        p.error(str(err))
    try:
        summary = sweep(
            params_file=str(args.params),
            overrides=overrides,
            datasets=args.dataset,
            use_deployments=not args.local,
            track=not args.no_track,
            throughput=args.throughput,
        )
    except user_errors() as err:  # bad params or data: as a stage script says it
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (SweepIncomplete, RunFailed, RunNotRetriable) as err:  # the log above has each step's
        sys.exit(f"error: {err}")
    print(summary)


if __name__ == "__main__":
    main()
