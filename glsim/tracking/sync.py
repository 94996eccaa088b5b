"""``glsim tracking sync``: replay what a :class:`~glsim.tracking.mlflow.Tracker` could not
send (its ``tracking-pending.jsonl``) to the tracking store now configured.

Each pending call names the run it belongs to: its run id and run key. Per run folder (or
a ``mlruns-pending/<name>.jsonl`` file of a run without one), the calls go into that run
when the target store has it (the server came back), or into the folder's current run
(``mlflow_run_id``) when that one has the calls' run key; a run of another key never
receives them. Otherwise they go into a new run with the same name and tags in the
experiment of the run's ``params.resolved.yaml`` (``base.experiment``), whose id the run
folder then records, unless the folder's current run is on the store (the calls are an
earlier configuration's: the new run is tagged ``superseded_by`` the folder's). Params
already on the run are kept (MLflow params are immutable), a metric keeps its step and time
(one already there at the same step is not sent twice, nor one logged without a step with
the same time and value, so a sync cut short can simply be run again), tags, artifacts (the
paths recorded in the file), tables (their cells are in the file) and the end status follow. An offline ``log_model`` is redone
from the run folder's checkpoint (:func:`glsim.train.run.load_run` with the folder's
``params.resolved.yaml``), with the class names the call recorded.

Replayed calls move to ``tracking-pending.synced.jsonl``; a call that cannot be replayed
yet (an artifact file gone, a checkpoint that cannot be loaded here) stays in
``tracking-pending.jsonl`` with its reason reported, for a later sync.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glsim.errors import SyncError
from glsim.tracking.mlflow import (
    PENDING_FILE,
    RUN_ID_FILE,
    SUPERSEDED_BY,
    SUPERSEDES,
    check_tracking,
    describe,
    log_pytorch_model,
    read_pending,
    tracking_uri,
    use_store,
)

SYNCED_FILE = "tracking-pending.synced.jsonl"
RESOLVED_PARAMS = "params.resolved.yaml"
DEFAULT_EXPERIMENT = "glsim"
SYNCED_FROM_TAG = "glsim.synced_from_run_id"
MAX_BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's log_batch limits


@dataclass
class SyncResult:
    """What one sync did: the target ``run_id`` (``created``: a new run), how many calls of
    each kind were replayed, and the calls ``kept`` for later with their reasons."""

    source: Path
    run_id: str | None = None
    created: bool = False
    replayed: dict[str, int] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    nothing: bool = False

    def summary(self) -> str:
        if self.nothing:
            return f"{self.source}: nothing to sync"
        done = ", ".join(f"{n} {k}" for k, n in sorted(self.replayed.items())) or "no calls"
        into = "new run" if self.created else "run"
        line = f"{self.source}: replayed {done} into {into} {self.run_id}"
        if self.kept:
            line += f"; kept {len(self.kept)} call(s) for a later sync"
        return line


def _paths(target: Path) -> tuple[Path, Path, Path | None]:
    """``(pending file, synced file, run folder or None)`` for a run folder or a file."""
    if target.is_dir():
        return target / PENDING_FILE, target / SYNCED_FILE, target
    if target.name == PENDING_FILE:  # the pending file of a run folder
        return target, target.with_name(SYNCED_FILE), target.parent
    if target.suffix == ".jsonl" and (target.is_file() or not target.exists()):
        stem = target.name.removesuffix(".jsonl")
        return target, target.with_name(f"{stem}.synced.jsonl"), None
    raise SyncError(
        f"{target}: not a run folder (with {PENDING_FILE}) nor a pending .jsonl file; "
        "pass the run folder of a run whose tracking server was down"
    )


def run_spec_for(run_dir: Path):
    """``(params, RunSpec)`` of a run folder, from its ``params.resolved.yaml`` and where it
    lies (:func:`glsim.runs.spec_of_run_dir`); None when the folder is not a run folder."""
    from glsim.config import ParamsError, load_params
    from glsim.errors import RunError
    from glsim.runs import spec_of_run_dir

    resolved = run_dir / RESOLVED_PARAMS
    if not resolved.is_file():
        return None
    try:
        params = load_params(resolved)
        spec, _ = spec_of_run_dir(run_dir.resolve(), params)
    except (ParamsError, RunError):
        return None
    return params, spec


def _experiment_of(run_dir: Path | None, experiment: str | None) -> str:
    if experiment:
        return experiment
    found = run_spec_for(run_dir) if run_dir is not None else None
    return found[0].base.experiment if found else DEFAULT_EXPERIMENT


class _Target:
    """The run on the target store that a group of pending calls goes into."""

    def __init__(
        self,
        client,
        run_id: str,
        *,
        uri: str = "",
        run_dir: Path | None = None,
        log_model: Callable[..., str | None] | None = None,
    ) -> None:
        self.client, self.run_id, self.uri = client, run_id, uri
        self.run_dir, self.log_model = run_dir, log_model  # the folder, to redo log_model
        self._history: dict[str, set[tuple[int, int, float]]] = {}
        self._steps: dict[str, set[int]] = {}  # the steps each metric holds a value at

    def params(self, flat: dict[str, Any]) -> int:
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)) for k, v in flat.items() if k not in have]
        for i in range(0, len(new), MAX_BATCH["params"]):
            self.client.log_batch(self.run_id, params=new[i : i + MAX_BATCH["params"]])
        return len(new)

    def metrics(self, rows: list[tuple[str, float, int, int | None]]) -> int:
        """``(key, value, timestamp ms, step)`` rows not already in the run's history: a
        step holds one value; a row without a step (MLflow's step 0) is new unless the same
        time and value is there."""
        from mlflow.entities import Metric

        new = []
        for key, value, ts, step in rows:
            if key not in self._history:
                history = self.client.get_metric_history(self.run_id, key)
                self._history[key] = {(m.step, m.timestamp, m.value) for m in history}
                self._steps[key] = {m.step for m in history}
            if step in self._steps[key] or (step or 0, ts, value) in self._history[key]:
                continue
            self._history[key].add((step or 0, ts, value))
            self._steps[key].add(step or 0)
            new.append(Metric(key, value, ts, step or 0))
        for i in range(0, len(new), MAX_BATCH["metrics"]):
            self.client.log_batch(self.run_id, metrics=new[i : i + MAX_BATCH["metrics"]])
        return len(new)

    def tags(self, tags: dict[str, Any]) -> int:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), MAX_BATCH["tags"]):
            self.client.log_batch(self.run_id, tags=items[i : i + MAX_BATCH["tags"]])
        return len(items)


def _stored_run(client, run_id: str | None):
    """The target store's run ``run_id``; None when there is no such (live) run."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if describe(err)[1]:
            raise
        return None
    return None if run.info.lifecycle_stage == "deleted" else run


def _holds(run, run_key: str | None) -> bool:
    """Whether calls of ``run_key`` belong in ``run`` (None: calls that name no key, from
    before keys were recorded, belong in the run they name)."""
    return run_key is None or run.data.tags.get("run_key") == run_key


def _new_run(client, calls, run_dir, experiment, old_id) -> str:
    start = next((c for c in calls if c["call"] == "start_run"), None)
    args = start["args"] if start else {}
    name = args.get("run_name")
    if not name and run_dir is not None:
        found = run_spec_for(run_dir)
        name = found[1].label(found[0]) if found else run_dir.name
    exp_name = _experiment_of(run_dir, experiment)
    exp = client.get_experiment_by_name(exp_name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(exp_name)
    tags = {k: str(v) for k, v in (args.get("tags") or {}).items()}
    tags.pop("mlflow.parentRunId", None)  # the parent's id belongs to the old store
    if old_id:
        tags[SYNCED_FROM_TAG] = old_id
    first = min((c.get("time") or time.time() for c in calls), default=time.time())
    run = client.create_run(exp_id, start_time=int(first * 1000), tags=tags, run_name=name)
    return run.info.run_id


def _log_model(
    uri: str, run_id: str, run_dir: Path | None, name: str, class_names: list[str] | None = None
) -> str | None:
    """Log the run folder's checkpoint as the run's model, named with ``class_names`` (the
    run's shards' names when the call recorded none); the reason when it cannot."""
    import mlflow

    from glsim.errors import user_errors

    if run_dir is None:
        return "no run folder to load the model from"
    found = run_spec_for(run_dir)
    if found is None:
        return f"{run_dir} has no {RESOLVED_PARAMS} matching its place (not a run folder)"
    params, spec = found
    from glsim.train.run import load_run

    try:
        model, _ = load_run(params, spec)
    except user_errors() as err:
        return f"the checkpoint cannot be loaded here ({str(err).splitlines()[0]})"
    if class_names is None:
        from glsim.data.shards import ShardError, read_class_names
        from glsim.runs import shard_source
        from glsim.train.run import num_classes

        with contextlib.suppress(ShardError):  # no shards here: a model without names
            class_names = read_class_names(shard_source(params, spec.kind), num_classes(params))
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        log_pytorch_model(
            model.cpu(), name=name, image_size=params.data.image_size, class_names=class_names
        )
    return None


def _append(path: Path, lines: list[str]) -> None:
    with path.open("a") as f:
        f.writelines(line + "\n" for line in lines)


def _rewrite(path: Path, lines: list[str]) -> None:
    from glsim.utils import atomic_write_text

    atomic_write_text(path, "".join(line + "\n" for line in lines))


@dataclass
class _Folder:
    """The run folder's own run: the id it records (``mlflow_run_id``) and the run key of the
    configuration it was last trained under (None where either is unknown)."""

    run_dir: Path | None
    run_id: str | None = None
    run_key: str | None = None

    @classmethod
    def read(cls, run_dir: Path | None) -> _Folder:
        folder = cls(run_dir)
        if run_dir is not None and (run_dir / RUN_ID_FILE).is_file():
            folder.run_id = (run_dir / RUN_ID_FILE).read_text().strip() or None
        if run_dir is not None and (found := run_spec_for(run_dir)) is not None:
            from glsim.runs import run_key

            folder.run_key = run_key(*found)
        return folder


def _target_run(
    client,
    folder: _Folder,
    group: list[dict],
    old_id: str | None,
    key: str | None,
    experiment: str | None,
) -> tuple[str, bool]:
    """The run a group of calls (of run ``old_id`` and run key ``key``) goes into, and
    whether it is new: the named run or the folder's run when it holds the key, else a new
    run, which becomes the folder's run when the calls are of the folder's configuration."""
    named, folder_run = _stored_run(client, old_id), _stored_run(client, folder.run_id)
    if named is not None and _holds(named, key):
        return old_id, False
    if folder_run is not None and key is not None and _holds(folder_run, key):
        return folder.run_id, False
    run_id = _new_run(client, group, folder.run_dir, experiment, old_id)
    known = key is not None and folder.run_key is not None
    current = key == folder.run_key if known else folder_run is None
    if current and folder.run_dir is not None:
        (folder.run_dir / RUN_ID_FILE).write_text(run_id)
        if folder_run is not None:
            client.set_tag(folder.run_id, SUPERSEDED_BY, run_id)
            client.set_tag(run_id, SUPERSEDES, folder.run_id)
        folder.run_id = run_id
    elif folder_run is not None:  # an earlier configuration of the folder
        client.set_tag(run_id, SUPERSEDED_BY, folder.run_id)
    return run_id, True


def _add(counts: dict[str, int], kind: str, n: int = 1) -> None:
    counts[kind] = counts.get(kind, 0) + n


def _gather(calls: dict[int, dict]):
    """``(params, metrics, tags, end, unknown)`` of ``calls`` (index -> call): the values to
    send as batches, the end status (or None) and the unknown calls (index -> reason)."""
    params: dict[str, Any] = {}
    tags: dict[str, Any] = {}
    metrics: list[tuple[str, float, int, int | None]] = []
    end: tuple[str, float | None] | None = None
    unknown: dict[int, str] = {}
    for i, call in calls.items():
        kind, args = call["call"], call.get("args") or {}
        if kind == "log_params":
            for k, v in args.items():
                params.setdefault(k, v)  # the first value was what the run logged
        elif kind == "log_metrics":
            ts = int(round((call.get("time") or time.time()) * 1000))
            step = call.get("step")
            step = None if step is None else int(step)
            metrics += [(k, float(v), ts, step) for k, v in args.items()]
        elif kind == "set_tags":
            tags.update(args)
        elif kind == "end_run":
            end = (args.get("status", "FINISHED"), call.get("time"))
        elif kind not in ("log_artifact", "log_table", "log_model", "start_run"):
            unknown[i] = f"unknown call {kind!r}"
    return params, metrics, tags, end, unknown


def _replay_files(run: _Target, calls: dict[int, dict], counts: dict[str, int]) -> dict[int, str]:
    """Send the artifacts and models of ``calls``; the calls that cannot be replayed yet
    are returned (index -> reason)."""
    kept: dict[int, str] = {}
    for i, call in calls.items():
        args = call.get("args") or {}
        if call["call"] == "log_artifact":
            path = Path(args["path"])
            if not path.exists():
                kept[i] = f"artifact {path} no longer exists"
                continue
            run.client.log_artifact(run.run_id, str(path), args.get("artifact_path"))
            _add(counts, "artifacts")
        elif call["call"] == "log_table":
            run.client.log_table(run.run_id, args["data"], args["artifact_file"])
            _add(counts, "tables")
        elif call["call"] == "log_model":
            where = Path(args["run_dir"]) if args.get("run_dir") else run.run_dir
            name = args.get("name") or "model"
            reason = run.log_model(run.uri, run.run_id, where, name, args.get("class_names"))
            if reason:
                kept[i] = f"model not logged: {reason}"
            else:
                _add(counts, "models")
    return kept


def _replay(run: _Target, calls: dict[int, dict], counts: dict[str, int]) -> dict[int, str]:
    """Replay ``calls`` (index -> call) into ``run``: params, metrics and tags as batches, then
    artifacts and models, then the end status; adds to ``counts`` what was sent and returns
    the calls kept for a later sync (index -> reason)."""
    params, metrics, tags, end, kept = _gather(calls)
    _add(counts, "params", run.params(params))
    _add(counts, "metrics", run.metrics(metrics))
    _add(counts, "tags", run.tags(tags))
    kept.update(_replay_files(run, calls, counts))
    if end is not None:
        status, when = end
        end_ms = int(when * 1000) if when else None
        run.client.set_terminated(run.run_id, status=status, end_time=end_ms)
        _add(counts, "end_run")
    return kept


def _settle(
    pending: Path,
    synced: Path,
    calls: list[dict],
    lines_read: int,
    kept: dict[int, str],
    new_ids: dict[int, str],
) -> None:
    """Move what was replayed to the synced file (with the run id it went into); keep the
    rest, and any line written meanwhile by a Tracker still running, in the pending file."""
    now = [ln for ln in pending.read_text().splitlines() if ln.strip()]
    extra = now[lines_read:]

    def line(i: int) -> str:
        call = dict(calls[i])
        call["run_id"] = new_ids.get(i, call.get("run_id"))
        return json.dumps(call, default=str)

    done = [line(i) for i in range(len(calls)) if i not in kept]
    left = [line(i) for i in sorted(kept)] + extra
    if not left and not synced.exists():
        _rewrite(pending, done)
        os.replace(pending, synced)
    else:
        _append(synced, done)
        if left:
            _rewrite(pending, left)
        else:
            pending.unlink()


def _client(uri: str | None):
    """``(uri, client)`` of the target store (default: the configured one, checked)."""
    from mlflow.tracking import MlflowClient

    if uri is None:
        uri = tracking_uri()
        check_tracking(uri)
        use_store()
    return uri, MlflowClient(uri)


def sync_run(
    target: str | Path,
    *,
    uri: str | None = None,
    experiment: str | None = None,
    log_model: Callable[..., str | None] = _log_model,
) -> SyncResult:
    """Replay ``target``'s pending tracking calls (see the module docstring) to ``uri``
    (default :func:`~glsim.tracking.mlflow.tracking_uri`)."""
    target = Path(target)
    if not target.exists():
        raise SyncError(f"{target}: no such run folder or pending file")
    pending, synced, run_dir = _paths(target)
    result = SyncResult(source=pending)
    calls, lines_read = read_pending(pending)
    if not calls:
        result.nothing = True
        return result
    uri, client = _client(uri)

    # one run per file in practice; a file of several runs (a folder retrained under another
    # key while the store was down) replays each group, in order, into its own run
    groups: dict[tuple[str | None, str | None], list[int]] = {}
    for i, call in enumerate(calls):
        groups.setdefault((call.get("run_id"), call.get("run_key")), []).append(i)
    folder = _Folder.read(run_dir)
    kept: dict[int, str] = {}  # call index -> reason
    new_ids: dict[int, str] = {}
    try:
        for (old_id, key), idx in groups.items():
            group = {i: calls[i] for i in idx}
            run_id, created = _target_run(
                client, folder, list(group.values()), old_id, key, experiment
            )
            result.run_id, result.created = run_id, result.created or created
            new_ids.update(dict.fromkeys(idx, run_id))
            run = _Target(client, run_id, uri=uri, run_dir=run_dir, log_model=log_model)
            kept.update(_replay(run, group, result.replayed))
    except Exception as err:
        from mlflow.exceptions import MlflowException

        reason, unreachable = describe(err)
        if unreachable or isinstance(err, MlflowException):
            raise SyncError(
                f"{pending}: sync to {uri} stopped ({reason}); nothing is lost: run "
                "`glsim tracking sync` again (what was sent is not sent twice)"
            ) from err
        raise
    result.kept = [f"{calls[i]['call']}: {why}" for i, why in sorted(kept.items())]
    _settle(pending, synced, calls, lines_read, kept, new_ids)
    return result
