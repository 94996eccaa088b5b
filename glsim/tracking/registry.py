"""The MLflow model registry: register one seed's model of a (dataset, model), move aliases.

What is registered, and how it is chosen (the test split is never read for a choice):

* The seed. Final runs train on the whole train split, so no held-out data is left to
  choose a seed by; :func:`best_candidate` takes the seed whose training converged furthest,
  the lowest final-epoch train loss (``train.json``; ties: the earlier seed in
  ``protocol.seeds``). That measures fit, not generalisation: it only keeps a run whose
  training went wrong from being deployed. The test top-1 of the seed registered
  (``seed_top1``) is therefore an unbiased estimate of the artifact's accuracy.
* The champion. Versions are compared by ``val_top1``: the LR search's top-1 at the chosen
  LR on the search split's val part, which the search run did not train on (one seed,
  ``protocol.search_seed``, ``protocol.search_epochs``). It rates the configuration (model,
  recipe, LR) on held-out data, not the artifact's own weights, which saw that val part.
  Two versions are compared only when measured alike: the same search split (the digest of
  its shard index, ``val_data``), seeds (``val_seeds``) and epochs (``val_epochs``);
  otherwise, or with no LR search (``protocol.lr_grid: []``), the decision says so and the
  version stays ``challenger``.

A version's tags: ``seed`` with ``seed_top1`` (the test top-1 of the artifact's own seed);
``top1_mean``/``top1_std``/``seeds`` (the test top-1 over all seeds, as in
``reports/results.json``: reported, never compared); ``selected_by``, ``seed_train_loss``
(every seed's final train loss) and ``val_*`` (what the choices compared); ``weights_sha256``
(the digest of the final weights); ``validation`` (the dataset's validation report:
passed/failed/missing); and the provenance of the MLflow run that logged the model, copied
from that run, never computed now: ``run_id``, ``run_key``, ``params_hash``, ``git_commit``,
``data_dvc_md5`` (when the run recorded none, the digest of the shard index in place,
``index-sha256:...``) and every ``runtime.*`` tag.

The model registered is the one logged by the MLflow run whose ``run_key`` tag is the run
folder's checkpoint key, and only if its weights are the checkpoint's final weights
(:class:`RegistryError` otherwise: one line).

:func:`promote` moves the alias ``champion`` to a version only if its validation passed and
its ``val_top1`` beats the current champion's by more than ``registry.margin`` percentage
points; otherwise it gets ``challenger``. A version rolled back (:func:`rollback`) is not
promoted again: a new result is a new version. Every alias move is appended to the
registered model's ``alias_history`` tag (a JSON list: time, alias, version, previous holder,
reason) and noted on the version (``promotion`` tag), so ``glsim registry show`` tells the
story. Alias moves of one registered model are serialised by a lock (:func:`alias_lock`), so
two sweeps promoting at once decide one after the other. Aliases, not stages (deprecated in
MLflow): load with ``models:/<name>@champion``.

The choice of the seed, its measures and the logged model are :mod:`glsim.tracking.candidate`'s;
this module registers, moves aliases and shows. Both sit beside the protocol layer, above
train and eval: they read their reports and checkpoints (imported when needed); nothing
below imports them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from glsim.config import Params, for_dataset
from glsim.errors import RegistryError  # noqa: F401  (raised here; re-exported)
from glsim.tracking.candidate import (  # noqa: F401  (weights_digest: re-exported)
    SELECTED_BY,
    best_candidate,
    provenance,
    source_of,
    validation_status,
    weights_digest,
)
from glsim.tracking.mlflow import check_tracking, tracking_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "alias_history"  # registered-model tag: every alias move, oldest first
VERSION_NOTE_TAG = "promotion"  # model-version tag: the last decision about this version
ROLLED_BACK_TAG = "rolled_back"  # model-version tag: when and why it lost the champion alias
MAX_TAG_CHARS = 100_000  # MLflow's limit for a registry tag value
LOCK_SUFFIX = ".alias-lock"  # the registered model whose existence is the lock
LOCK_STALE_S = 600.0  # a lock older than this was left by a process that died
LOCK_WAIT_S = 120.0


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
# registering


def _ensure_registered(client: MlflowClient, name: str, description: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        with contextlib.suppress(MlflowException):  # another process created it meanwhile
            client.create_registered_model(name, description=description)


def register_best(
    params: Params, dataset: str, model: str, *, client: MlflowClient | None = None
) -> ModelVersion:
    """Register the chosen seed's model of ``model`` on ``dataset`` (see the module docstring).

    Registering the same result again (same logged model, key, measures and validation)
    returns the version already registered instead of a new one.
    """
    client = registry_client(client)
    cand = best_candidate(params, dataset, model)
    p = for_dataset(params, dataset)
    run, model_id, digest = source_of(client, p, cand)
    tags = {
        "dataset": dataset,
        "model": model,
        "seed": str(cand.seed),
        "lr": f"{cand.lr:g}",
        "run_id": run.info.run_id,
        "seed_top1": f"{cand.seed_top1:.4f}",
        "top1_mean": f"{cand.top1_mean:.4f}",
        "top1_std": f"{cand.top1_std:.4f}",
        "seeds": json.dumps(cand.seeds, sort_keys=True),
        "selected_by": SELECTED_BY,
        "seed_train_loss": json.dumps(cand.train_loss, sort_keys=True),
        "val_top1": "" if cand.val_top1 is None else f"{cand.val_top1:.4f}",
        **cand.val_on,
        "weights_sha256": digest,
        "validation": validation_status(p),
        **provenance(run, p),
    }
    tags = {k: v for k, v in tags.items() if v != ""}  # MLflow refuses empty tag values
    name = model_name(params, dataset, model)
    _ensure_registered(
        client, name, f"GLSim protocol: {model} on {dataset}, one seed of each result"
    )
    source = f"models:/{model_id}"
    same = ("run_key", "weights_sha256", "seeds", "val_top1", "val_data", "validation")
    with alias_lock(client, name):  # two registrations of one result give one version
        for mv in client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'"):
            if mv.source == source and all(mv.tags.get(k) == tags.get(k) for k in same):
                return mv
        return client.create_model_version(
            name, source=source, run_id=run.info.run_id, tags=tags,
            model_id=model_id,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------
# aliases


@dataclass(frozen=True)
class Decision:
    """What :func:`promote` / :func:`rollback` did: ``alias`` now points at ``version``
    (``moved`` False when nothing changed; ``alias`` empty: the version holds none);
    ``previous`` held that alias before."""

    name: str
    version: str
    alias: str
    previous: str | None
    reason: str
    moved: bool


@contextlib.contextmanager
def alias_lock(
    client: MlflowClient, name: str, *, wait_s: float = LOCK_WAIT_S, stale_s: float = LOCK_STALE_S
) -> Iterator[None]:
    """Hold the lock on ``name``'s aliases and ``alias_history`` while the block runs.

    The lock is a registered model ``<name>.alias-lock``: creating a registered model is
    atomic in every MLflow store (its name is unique), local or behind a server, so of two
    writers exactly one creates it; the other waits until it is deleted. A lock older than
    ``stale_s`` seconds was left by a process that died, and is broken."""
    lock = name + LOCK_SUFFIX
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(
                lock, tags={"owner": token, "since": f"{time.time():.3f}"},
                description=f"held while glsim moves the aliases of {name}; delete it if stale",
            )  # fmt: skip
            break
        except MlflowException as err:
            # held by another writer, or deleted by its holder while this create ran
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        with contextlib.suppress(MlflowException, ValueError):  # deleted meanwhile: retry
            since = float(client.get_registered_model(lock).tags.get("since", "0"))
            if time.time() - since > stale_s:
                client.delete_registered_model(lock)
                continue
        if time.monotonic() > deadline:
            raise RegistryError(
                f"{name}: another process has held the alias lock {lock!r} for over "
                f"{wait_s:.0f} s; wait for it, or delete that registered model if it is stale"
            )
        time.sleep(0.2)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            if client.get_registered_model(lock).tags.get("owner") == token:
                client.delete_registered_model(lock)


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


def _move(
    client: MlflowClient, name: str, alias: str, version: str, reason: str, action: str
) -> Decision:
    """Point ``alias`` at ``version`` and record the move (time, previous holder, reason).
    The caller holds :func:`alias_lock`."""
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


def _val(mv: ModelVersion) -> float | None:
    try:
        return float(mv.tags["val_top1"])
    except (KeyError, ValueError):
        return None


def _measured_on(mv: ModelVersion) -> tuple[str | None, ...]:
    return tuple(mv.tags.get(k) for k in ("val_data", "val_seeds", "val_epochs"))


def decide(new: ModelVersion, champion: ModelVersion | None, margin: float) -> tuple[str, str]:
    """The promotion rule: ``(alias, reason)`` for ``new`` against the current champion,
    by ``val_top1`` (never the test top-1; see the module docstring)."""
    val = _val(new)
    shown = "no val top-1 (no LR search)" if val is None else f"val top-1 {val:.4f}"
    validation = new.tags.get("validation", "missing")
    if validation != "passed":
        return CHALLENGER, f"dataset validation {validation} ({shown})"
    if champion is None:
        return CHAMPION, f"first champion: {shown}, validation passed"
    best = _val(champion)
    if val is None or best is None:
        who = "it" if val is None else f"champion v{champion.version}"
        return CHALLENGER, (f"{who} has no val top-1 (no LR search) to compare by: not promoted")
    if _measured_on(new) != _measured_on(champion):
        data, seeds, epochs = _measured_on(champion)
        mine = _measured_on(new)
        return CHALLENGER, (
            f"val top-1 {val:.4f} vs champion v{champion.version} {best:.4f} not comparable: "
            f"measured on {mine[0]} seeds {mine[1]} {mine[2]} epochs, the champion on {data} "
            f"seeds {seeds} {epochs} epochs; not promoted"
        )
    diff = val - best
    versus = (
        f"val top-1 {val:.4f} vs champion v{champion.version} {best:.4f} "
        f"({diff:+.4f} points, margin {margin:g})"
    )
    if diff > margin:
        return CHAMPION, f"{versus}: beats it by more than the margin, validation passed"
    return CHALLENGER, f"{versus}: does not beat it by more than the margin"


def promote(
    name: str, version: str | int, *, margin: float, client: MlflowClient | None = None
) -> Decision:
    """Give ``version`` the alias ``champion`` or ``challenger`` by :func:`decide`; a version
    rolled back is left as it is."""
    client = registry_client(client)
    version = str(version)
    with alias_lock(client, name):
        aliases = _aliases(client, name)
        new = client.get_model_version(name, version)
        if "weights_sha256" not in new.tags:
            raise RegistryError(
                f"{name} v{version} has no weights_sha256 tag: it was not registered by "
                "`glsim registry promote`, whose weights are checked against the run folder"
            )
        if aliases.get(CHAMPION) == version:
            return Decision(name, version, CHAMPION, version, "already the champion", moved=False)
        if ROLLED_BACK_TAG in new.tags:
            holder = next((a for a, v in aliases.items() if v == version), "")
            why = f"rolled back ({new.tags[ROLLED_BACK_TAG]}); a new result is a new version"
            return Decision(name, version, holder, version if holder else None, why, moved=False)
        champion = (
            client.get_model_version(name, aliases[CHAMPION]) if CHAMPION in aliases else None
        )
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
    """Move ``champion`` back to the version that held it before the current one; the
    current one is tagged ``rolled_back`` and :func:`promote` leaves it alone from then on."""
    client = registry_client(client)
    with alias_lock(client, name):
        current = _aliases(client, name).get(CHAMPION)
        if current is None:
            raise RegistryError(f"{name} has no champion to roll back")
        stack = [v for v in champion_stack(history(client, name)) if v != current]
        if not stack:
            raise RegistryError(
                f"{name}: champion v{current} has no previous holder in the {HISTORY_TAG} "
                "tag; nothing to roll back to"
            )
        why = f"rollback from v{current}" + (f": {reason}" if reason else "")
        decision = _move(client, name, CHAMPION, stack[-1], why, action="rollback")
        client.set_model_version_tag(name, current, ROLLED_BACK_TAG, f"{_now()}: {why}")
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
            f"  v{v['version']}{flag}: val top-1 {tags.get('val_top1', '-')}, seed "
            f"{tags.get('seed', '?')} test top-1 {tags.get('seed_top1', '?')}, test top-1 "
            f"{tags.get('top1_mean', '?')} ± {tags.get('top1_std', '?')} over seeds "
            f"{tags.get('seeds', '?')}, validation {tags.get('validation', '?')}, "
            f"run {v['run_id']}, {v['created']}"
        )
        shown = ("val_top1", "seed", "seed_top1", "top1_mean", "top1_std", "seeds")
        rest = {k: val for k, val in tags.items() if k not in (*shown, "validation", "run_id")}
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
