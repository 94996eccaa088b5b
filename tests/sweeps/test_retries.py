"""Which failures of a training run are retried: a crash or I/O error is, twice; a diverged
run or bad input is not, and says so in its flow run's state (training stubbed out). A
glsim error is one ``error:`` line in the flow run's log, not a traceback, and the sweep
says when each run starts and how it ends."""

from __future__ import annotations

import logging
import re

import pytest

from flows import steps
from flows.sweep import train
from flows.train_one import (
    BAD_INPUT,
    DIVERGED,
    RunFailed,
    RunNotRetriable,
    not_transient,
    request,
    train_one,
)
from glsim.config import ParamsError
from glsim.errors import TrackingUnavailable
from glsim.train.claim import RunClaimed
from glsim.train.loop import TrainingDiverged


@pytest.fixture
def attempts(monkeypatch):
    """Stub the run: each attempt raises the next error of ``errors`` (None: succeeds)."""
    errors: list[BaseException | None] = []
    calls: list[str] = []

    def train_and_evaluate(params, kind, name, seed, lr, *, track=True, request=None, nproc=1):
        calls.append(name)
        err = errors.pop(0) if errors else None
        if err is not None:
            raise err
        return {"top1": 50.0}

    monkeypatch.setattr(steps, "resolve", lambda *a: None)
    monkeypatch.setattr(steps, "is_done", lambda *a: False)
    monkeypatch.setattr(steps, "train_and_evaluate", train_and_evaluate)
    return errors, calls


@pytest.fixture
def run_logs():
    """The records of flow-run and task-run loggers (what a worker's or sweep's shell shows)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.INFO)
    loggers = [logging.getLogger(f"prefect.{n}") for n in ("flow_runs", "task_runs")]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


REQ = request("params.yaml", None, "synthetic_fg", "final", "glsim", 1, track=False)
RUN = "synthetic_fg/final/glsim/seed1"
quick = train.with_options(retry_delay_seconds=0)


def test_a_transient_failure_is_retried_twice(prefect_harness, attempts):
    errors, calls = attempts
    errors += [OSError("NFS hiccup"), OSError("NFS hiccup")]
    assert quick(RUN, REQ, False, "unused", 0.1) == "trained"
    assert len(calls) == 3

    errors += [OSError("down")] * 3
    with pytest.raises(RunFailed, match="OSError|down"):
        quick(RUN, REQ, False, "unused", 0.1)


@pytest.mark.parametrize(
    "error, state_name, raised",
    [
        (
            TrainingDiverged("loss is nan at epoch 1, step 3 (lr 30); lower the LR"),
            DIVERGED,
            TrainingDiverged,
        ),
        (ParamsError("train.lr: bad value"), BAD_INPUT, RunNotRetriable),
    ],
)
def test_a_diverged_run_or_bad_input_fails_once_and_loudly(
    prefect_harness, attempts, error, state_name, raised
):
    errors, calls = attempts
    errors.append(error)
    state = train_one(**REQ, gpu_limit=False, return_state=True)
    assert state.is_failed() and state.name == state_name and str(error) in state.message

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # as a sweep on another node reads it
        stored = client.read_flow_run(state.state_details.flow_run_id).state
    assert stored.name == state_name and str(error) in stored.message

    calls.clear()
    errors.append(error)
    with pytest.raises(raised, match=re.escape(str(error))):
        quick(RUN, REQ, False, "unused", 0.1)
    assert len(calls) == 1  # not retried


CLAIMED = "runs/synthetic_fg/glsim/seed1 is being trained by pid 7 on host node-b since T"


def test_a_run_another_trainer_holds_is_retried(prefect_harness, attempts):
    """A retry while the first attempt still trains is refused, then retried: once that
    one has finished, the retry skips the run (``train_run``)."""
    errors, calls = attempts
    errors.append(RunClaimed(CLAIMED))
    assert quick(RUN, REQ, False, "unused", 0.1) == "trained"
    assert len(calls) == 2


def torchrun_whose_ranks_record(monkeypatch, *errors: BaseException, stderr: str = "") -> None:
    """``subprocess.run`` as torchrun whose ranks stopped on ``errors``: each appended its
    record (:func:`glsim.errors.guarded`) to the file the flow named, and exited."""
    import subprocess

    from glsim.errors import ERROR_RECORD_ENV, guarded

    def run(cmd, *, env, **kwargs):
        for rank, error in enumerate(errors):
            monkeypatch.setenv(ERROR_RECORD_ENV, env[ERROR_RECORD_ENV])
            monkeypatch.setenv("RANK", str(rank))

            def fail(error=error):
                raise error

            guarded(fail, debug=False)
        return subprocess.CompletedProcess(cmd, returncode=1, stdout="", stderr=stderr)

    monkeypatch.setattr(subprocess, "run", run)


def test_a_torchrun_rank_refused_its_claim_is_a_run_claimed(monkeypatch):
    torchrun_whose_ranks_record(monkeypatch, RunClaimed(f"{CLAIMED}; wait for it"))
    with pytest.raises(RunClaimed, match=re.escape(CLAIMED)):
        steps.torchrun_train(REQ, 2)


def test_a_torchrun_ranks_error_is_read_from_its_record_not_its_stderr(monkeypatch):
    """The first record written is raised, as its own class (a transient one stays
    transient); torchrun's stderr, whatever it says, is not read."""
    from glsim.data.download import DownloadError

    down = TrackingUnavailable(DOWN)
    torchrun_whose_ranks_record(
        monkeypatch, down, ParamsError("train.batch_size 7"), stderr="error: loss is nan\n"
    )
    with pytest.raises(TrackingUnavailable, match=re.escape(DOWN)) as raised:
        steps.torchrun_train(REQ, 2)
    assert not isinstance(raised.value, not_transient())
    torchrun_whose_ranks_record(monkeypatch, DownloadError("a mirror is down"))
    with pytest.raises(DownloadError, match="a mirror is down"):
        steps.torchrun_train(REQ, 2)


def test_a_torchrun_rank_that_left_no_record_is_its_exit_status(monkeypatch):
    from glsim.errors import CommandError

    torchrun_whose_ranks_record(monkeypatch, stderr="error: not a record\n")
    with pytest.raises(CommandError, match="failed: exit status 1$"):
        steps.torchrun_train(REQ, 2)


DOWN = (
    "MLflow tracking server http://127.0.0.1:9 is not reachable (connection refused): "
    "start it (e.g. `mlflow server --host 127.0.0.1 --port 9`)"
)


def test_a_tracking_failure_is_one_error_line_and_is_retried(prefect_harness, attempts, run_logs):
    errors, calls = attempts
    errors.append(TrackingUnavailable(DOWN))
    state = train_one(**REQ, gpu_limit=False, return_state=True)
    assert state.is_failed() and state.name not in (DIVERGED, BAD_INPUT)
    assert state.message == f"TrackingUnavailable: {DOWN}"
    said = [r.getMessage() for r in run_logs if r.getMessage().startswith("error: ")]
    assert said == [f"error: {RUN}: {DOWN}"]
    assert not [r for r in run_logs if r.exc_info], "a traceback was logged"

    calls.clear()
    errors += [TrackingUnavailable(DOWN)] * 3
    with pytest.raises(RunFailed, match=re.escape(DOWN)):
        quick(RUN, REQ, False, "unused", 0.1)
    assert len(calls) == 3  # transient: retried twice


def test_the_sweep_says_when_each_run_starts_and_how_it_ends(prefect_harness, attempts, run_logs):
    errors, _ = attempts
    assert quick(RUN, REQ, False, "unused", 0.1) == "trained"
    errors.append(ParamsError("train.lr: bad value"))
    with pytest.raises(RunNotRetriable):
        quick(RUN, REQ, False, "unused", 0.1)
    lines = [r.getMessage() for r in run_logs if r.name == "prefect.task_runs"]
    progress = [line for line in lines if re.match(rf"{RUN}: (started|\w+) here", line)]
    assert progress[0] == f"{RUN}: started here"
    assert re.fullmatch(rf"{RUN}: Completed here after \d+ s", progress[1])
    assert progress[2] == f"{RUN}: started here"
    assert re.fullmatch(
        rf"{RUN}: {BAD_INPUT} here after \d+ s: ParamsError: train.lr: bad value", progress[3]
    )
