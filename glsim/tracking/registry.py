"""The MLflow model registry: register the best seed of a (dataset, model), move aliases.

After the seeds of a model are evaluated, :func:`register_best` registers the model of the
best seed's run (``runs:/<run id>/model``, the model training logged) as
``registry.name_template`` (``glsim-<dataset>-<model>``), with version tags saying what it
is: ``top1_mean``/``top1_std``/``seeds`` (the same numbers as ``reports/results.json``),
``seed``, ``lr``, ``run_id``, ``run_key``, ``params_hash``, ``data_dvc_md5``,
``git_commit`` and ``validation`` (the dataset's validation report: passed/failed/missing).

:func:`promote` moves the alias ``champion`` to that version only if its mean test top-1
beats the current champion's by more than ``registry.margin`` percentage points and its
validation passed; otherwise it gets ``challenger``. :func:`rollback` gives ``champion``
back to the version that held it before. Every alias move is appended to the registered
model's ``alias_history`` tag (a JSON list: time, alias, version, previous holder, reason)
and noted on the version (``promotion`` tag), so ``glsim registry show`` tells the story.
Aliases, not stages (deprecated in MLflow): load with ``models:/<name>@champion``.

This module sits beside the protocol layer, above train and eval: it reads their reports
and checkpoints (imported when needed); nothing below imports it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from glsim import runs
from glsim.config import Params, for_dataset
from glsim.errors import RegistryError  # noqa: F401  (raised here; re-exported)
from glsim.tracking.mlflow import (
    RUN_ID_FILE,
    check_tracking,
    dvc_hash,
    git_commit,
    tracking_uri,
)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "alias_history"  # registered-model tag: every alias move, oldest first
VERSION_NOTE_TAG = "promotion"  # model-version tag: the last decision about this version
MODEL_ARTIFACT = "model"  # the name training logs its model under (``runs:/<id>/model``)
MAX_TAG_CHARS = 100_000  # MLflow's limit for a registry tag value


def registry_client(client: MlflowClient | None = None) -> MlflowClient:
    """``client``, or one for :func:`~glsim.tracking.mlflow.tracking_uri` once it answers."""
    if client is not None:
        return client
    uri = tracking_uri()
    check_tracking(uri)
    return MlflowClient(uri)


def model_name(params: Params, dataset: str, model: str) -> str:
    return params.registry.name_template.format(dataset=dataset, model=model)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------------------------------
# what is registered


@dataclass(frozen=True)
class Candidate:
    """The best seed's run of a (dataset, model) and the numbers over all its seeds."""

    dataset: str
    model: str
    seed: int
    lr: float
    run_dir: Path
    top1_mean: float
    top1_std: float
    seeds: dict[str, float]
    run_key: str | None = None  # the key its eval report was written under


def best_candidate(params: Params, dataset: str, model: str) -> Candidate:
    """Read every seed's eval report of ``model`` on ``dataset`` (``protocol.seeds``) and pick
    the best seed (ties: the earlier seed in ``protocol.seeds``)."""
    from glsim.eval.tables import aggregate, load_reports

    if model not in params.protocol.models:
        raise RegistryError(
            f"model {model!r} is not in protocol.models {params.protocol.models}; "
            "only the main models' final runs are registered"
        )
    p = for_dataset(params, dataset)
    seeds = list(p.protocol.seeds)
    paths = {seed: runs.eval_report(p, model, seed) for seed in seeds}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise RegistryError(
            f"{dataset}/{model}: eval report(s) missing: {', '.join(missing)}; evaluate every "
            f"seed of protocol.seeds first (dvc repro, or pipelines/evaluate.py)"
        )
    reports = dict(zip(paths, load_reports(paths.values()), strict=True))
    best = max(seeds, key=lambda s: (float(reports[s]["top1"]), -seeds.index(s)))
    entry = aggregate(reports.values())[reports[best]["dataset"]][reports[best]["model"]]
    return Candidate(
        dataset=dataset,
        model=model,
        seed=best,
        lr=float(reports[best]["lr"]),
        run_dir=runs.RunSpec(model=model, seed=best).run_dir(p),
        top1_mean=float(entry["top1_mean"]),
        top1_std=float(entry["top1_std"]),
        seeds={str(k): float(v) for k, v in entry["seeds"].items()},
        run_key=reports[best].get("run_key"),
    )


def validation_status(params: Params) -> str:
    """``passed`` / ``failed`` from the dataset's ``validation.json`` (``missing`` if none)."""
    path = runs.validation_report(params)
    if not path.is_file():
        return "missing"
    try:
        return "passed" if json.loads(path.read_text()).get("success") else "failed"
    except (json.JSONDecodeError, AttributeError):
        return "failed"


def _run_key(params: Params, cand: Candidate, run_tags: dict[str, str]) -> str:
    """The run's key: the one its eval report was written under; for reports older than run
    keys, its checkpoint's (loaded only then), else its MLflow tag, else recomputed."""
    from glsim.train.checkpoint import CHECKPOINT_NAME, read_checkpoint

    if cand.run_key:
        return cand.run_key
    ckpt = cand.run_dir / CHECKPOINT_NAME
    if ckpt.is_file():
        key = read_checkpoint(ckpt).get("extra", {}).get("run_key")
        if key:
            return str(key)
    if run_tags.get("run_key"):
        return run_tags["run_key"]
    return runs.run_key(params, runs.RunSpec(model=cand.model, seed=cand.seed, lr=cand.lr))


def _logged_model_id(client: MlflowClient, run) -> str | None:
    """The id of the model the run logged as ``model`` (the latest if several)."""
    ids = [o.model_id for o in sorted(run.outputs.model_outputs, key=lambda o: o.step)]
    for model_id in reversed(ids):
        if client.get_logged_model(model_id).name == MODEL_ARTIFACT:
            return model_id
    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"name = '{MODEL_ARTIFACT}'"
    )
    mine = [m for m in found if m.source_run_id == run.info.run_id]
    return mine[-1].model_id if mine else None


def _run_of(client: MlflowClient, cand: Candidate):
    id_file = cand.run_dir / RUN_ID_FILE
    if not id_file.is_file():
        raise RegistryError(
            f"{id_file} missing: the run of {cand.dataset}/{cand.model} seed {cand.seed} was "
            "not tracked; train it with tracking on, then run `glsim registry promote` again"
        )
    run_id = id_file.read_text().strip()
    try:
        return client.get_run(run_id)
    except MlflowException as err:
        raise RegistryError(
            f"MLflow run {run_id} (from {id_file}) is not in the tracking store "
            f"{client.tracking_uri} ({str(err).splitlines()[0][:120]}): if it was tracked "
            f"while the server was down, run `glsim tracking sync {cand.run_dir}` first"
        ) from None


def register_best(
    params: Params, dataset: str, model: str, *, client: MlflowClient | None = None
) -> ModelVersion:
    """Register the best seed's model of ``model`` on ``dataset`` (see the module docstring).

    Registering the same result again (same run, key, params and accuracies) returns the
    version already registered instead of a new one.
    """
    client = registry_client(client)
    cand = best_candidate(params, dataset, model)
    p = for_dataset(params, dataset)
    run = _run_of(client, cand)
    run_id = run.info.run_id
    model_id = _logged_model_id(client, run)
    if model_id is None:
        raise RegistryError(
            f"MLflow run {run_id} ({cand.run_dir}) has no logged model {MODEL_ARTIFACT!r}: "
            f"if its tracking server was down, run `glsim tracking sync {cand.run_dir}` first"
        )
    run_tags = run.data.tags
    tags = {
        "dataset": dataset,
        "model": model,
        "seed": str(cand.seed),
        "lr": f"{cand.lr:g}",
        "run_id": run_id,
        "top1_mean": f"{cand.top1_mean:.4f}",
        "top1_std": f"{cand.top1_std:.4f}",
        "seeds": json.dumps(cand.seeds, sort_keys=True),
        "run_key": _run_key(p, cand, run_tags),
        "params_hash": p.digest(),
        "data_dvc_md5": dvc_hash(runs.shards_dir(p)) or run_tags.get("data_dvc_md5", ""),
        "git_commit": run_tags.get("git_commit") or git_commit(),
        "validation": validation_status(p),
    }
    name = model_name(params, dataset, model)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description=f"GLSim protocol: {model} on {dataset}, best seed of each result"
        )
    same = ("run_key", "params_hash", "top1_mean", "seeds", "validation")
    for mv in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if all(mv.tags.get(k) == tags[k] for k in same):
            return mv
    return client.create_model_version(
        name, source=f"models:/{model_id}", run_id=run_id, tags=tags, model_id=model_id
    )


# ---------------------------------------------------------------------------------------
# aliases


@dataclass(frozen=True)
class Decision:
    """What :func:`promote` / :func:`rollback` did: ``alias`` now points at ``version``
    (``moved`` False when nothing changed); ``previous`` held that alias before."""

    name: str
    version: str
    alias: str
    previous: str | None
    reason: str
    moved: bool


def history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every alias move of ``name``, oldest first (the ``alias_history`` tag)."""
    raw = _registered(client, name).tags.get(HISTORY_TAG)
    return json.loads(raw) if raw else []


def _registered(client: MlflowClient, name: str):
    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(
            f"no registered model {name!r} in {client.tracking_uri}: register one with "
            "`glsim registry promote DATASET MODEL`"
        ) from None


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """``name``'s aliases -> version strings (the embedded sqlite store gives ints, a
    tracking server strings; versions elsewhere are strings)."""
    return {alias: str(v) for alias, v in _registered(client, name).aliases.items()}


def _top1(mv: ModelVersion) -> float:
    try:
        return float(mv.tags["top1_mean"])
    except (KeyError, ValueError):
        raise RegistryError(
            f"{mv.name} version {mv.version} has no numeric top1_mean tag; it was not "
            "registered by `glsim registry promote`"
        ) from None


def _move(
    client: MlflowClient, name: str, alias: str, version: str, reason: str, action: str
) -> Decision:
    """Point ``alias`` at ``version`` and record the move (time, previous holder, reason)."""
    previous = _aliases(client, name).get(alias)
    if previous == version:
        return Decision(name, version, alias, previous, reason, moved=False)
    client.set_registered_model_alias(name, alias, version)
    entry = {
        "time": _now(),
        "action": action,
        "alias": alias,
        "version": version,
        "previous": previous,
        "reason": reason,
    }
    past = history(client, name) + [entry]
    while len(past) > 1 and len(json.dumps(past)) > MAX_TAG_CHARS:
        past.pop(0)  # the oldest moves go first when the tag is full
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(past))
    note = f"{entry['time']} {action} -> {alias}: {reason}"
    client.set_model_version_tag(name, version, VERSION_NOTE_TAG, note[:5000])
    if previous is not None:
        client.set_model_version_tag(
            name, previous, f"{alias}_until", f"{entry['time']} (v{version}: {action})"
        )
    return Decision(name, version, alias, previous, reason, moved=True)


def decide(new: ModelVersion, champion: ModelVersion | None, margin: float) -> tuple[str, str]:
    """The promotion rule: ``(alias, reason)`` for ``new`` against the current champion."""
    top1 = _top1(new)
    validation = new.tags.get("validation", "missing")
    if validation != "passed":
        return CHALLENGER, f"dataset validation {validation} (mean test top-1 {top1:.4f})"
    if champion is None:
        return CHAMPION, f"first champion: mean test top-1 {top1:.4f}, validation passed"
    best = _top1(champion)
    diff = top1 - best
    versus = (
        f"mean test top-1 {top1:.4f} vs champion v{champion.version} {best:.4f} "
        f"({diff:+.4f} points, margin {margin:g})"
    )
    if diff > margin:
        return CHAMPION, f"{versus}: beats it by more than the margin, validation passed"
    return CHALLENGER, f"{versus}: does not beat it by more than the margin"


def promote(
    name: str, version: str | int, *, margin: float, client: MlflowClient | None = None
) -> Decision:
    """Give ``version`` the alias ``champion`` or ``challenger`` by :func:`decide`."""
    client = registry_client(client)
    version = str(version)
    aliases = _aliases(client, name)
    new = client.get_model_version(name, version)
    if aliases.get(CHAMPION) == version:
        return Decision(name, version, CHAMPION, version, "already the champion", moved=False)
    champion = client.get_model_version(name, aliases[CHAMPION]) if CHAMPION in aliases else None
    alias, reason = decide(new, champion, margin)
    decision = _move(client, name, alias, version, reason, action="promote")
    if alias == CHAMPION and aliases.get(CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)  # a champion is no challenger
    return decision


def register_and_promote(
    params: Params, dataset: str, model: str, *, client: MlflowClient | None = None
) -> tuple[ModelVersion, Decision]:
    """What follows the seeds of ``(dataset, model)``: :func:`register_best`, then
    :func:`promote` by ``registry.margin`` (``glsim registry promote`` and the sweep)."""
    client = registry_client(client)
    mv = register_best(params, dataset, model, client=client)
    return mv, promote(mv.name, mv.version, margin=params.registry.margin, client=client)


def champion_stack(entries: list[dict[str, Any]]) -> list[str]:
    """The champions in order, as the history leaves them: a promotion pushes its version,
    a rollback pops the version it rolled back from."""
    stack: list[str] = []
    for e in entries:
        if e.get("alias") != CHAMPION:
            continue
        if e.get("action") == "rollback":
            if stack and stack[-1] == e.get("previous"):
                stack.pop()
            if not stack or stack[-1] != e["version"]:
                stack.append(e["version"])
        else:
            stack.append(e["version"])
    return stack


def rollback(
    name: str, *, reason: str | None = None, client: MlflowClient | None = None
) -> Decision:
    """Move ``champion`` back to the version that held it before the current one."""
    client = registry_client(client)
    current = _aliases(client, name).get(CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    stack = champion_stack(history(client, name))
    while stack and stack[-1] == current:
        stack.pop()
    stack = [v for v in stack if v != current]
    if not stack:
        raise RegistryError(
            f"{name}: champion v{current} has no previous holder in the {HISTORY_TAG} tag; "
            "nothing to roll back to"
        )
    target = stack[-1]
    why = f"rollback from v{current}" + (f": {reason}" if reason else "")
    decision = _move(client, name, CHAMPION, target, why, action="rollback")
    client.set_model_version_tag(name, current, "rolled_back", f"{_now()}: {why}")
    return decision


# ---------------------------------------------------------------------------------------
# showing


def describe_model(name: str, *, client: MlflowClient | None = None) -> dict[str, Any]:
    """``name``'s aliases, versions (newest first, with tags and aliases) and history."""
    client = registry_client(client)
    aliases = _aliases(client, name)
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    versions = sorted(
        client.search_model_versions(f"name = '{name}'"), key=lambda mv: -int(mv.version)
    )
    return {
        "name": name,
        "aliases": aliases,
        "versions": [
            {
                "version": mv.version,
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "run_id": mv.run_id,
                "source": mv.source,
                "created": time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(mv.creation_timestamp / 1000)
                ),
                "tags": dict(sorted(mv.tags.items())),
            }
            for mv in versions
        ],
        "history": history(client, name),
    }


def format_model(info: dict[str, Any]) -> str:
    """:func:`describe_model` as text for ``glsim registry show``."""
    lines = [f"{info['name']}"]
    aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(info["aliases"].items()))
    lines.append(f"aliases: {aliases or '(none)'}")
    lines.append("versions:")
    for v in info["versions"]:
        tags = v["tags"]
        flag = f" [{', '.join(v['aliases'])}]" if v["aliases"] else ""
        lines.append(
            f"  v{v['version']}{flag}: top1 {tags.get('top1_mean', '?')} ± "
            f"{tags.get('top1_std', '?')} (seeds {tags.get('seeds', '?')}), "
            f"validation {tags.get('validation', '?')}, run {v['run_id']}, {v['created']}"
        )
        rest = {
            k: val
            for k, val in tags.items()
            if k not in ("top1_mean", "top1_std", "seeds", "validation", "run_id")
        }
        lines += [f"      {k}: {val}" for k, val in rest.items()]
    lines.append("history:")
    for e in info["history"] or []:
        prev = f" (was v{e['previous']})" if e.get("previous") else ""
        lines.append(
            f"  {e['time']} {e['action']}: {e['alias']} -> v{e['version']}{prev}: {e['reason']}"
        )
    if not info["history"]:
        lines.append("  (no alias moves)")
    return "\n".join(lines)


def decision_dict(decision: Decision) -> dict[str, Any]:
    return asdict(decision)
