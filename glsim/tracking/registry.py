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

This module sits beside the protocol layer, above train and eval: it reads their reports
and checkpoints (imported when needed); nothing below imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from glsim import runs
from glsim.config import Params, for_dataset
from glsim.errors import RegistryError  # noqa: F401  (raised here; re-exported)
from glsim.tracking.mlflow import RUN_ID_FILE, check_tracking, tracking_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "alias_history"  # registered-model tag: every alias move, oldest first
VERSION_NOTE_TAG = "promotion"  # model-version tag: the last decision about this version
ROLLED_BACK_TAG = "rolled_back"  # model-version tag: when and why it lost the champion alias
MODEL_ARTIFACT = "model"  # the name training logs its model under (``runs:/<id>/model``)
MAX_TAG_CHARS = 100_000  # MLflow's limit for a registry tag value
SELECTED_BY = (
    "seed: lowest final-epoch train loss (fit; test never read); "
    "champion: val_top1, the LR search's val top-1 at the chosen LR (held out from the search run)"
)
PROVENANCE_TAGS = ("run_key", "params_hash", "data_dvc_md5", "git_commit")
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


def index_digest(shards: Path) -> str:
    """``index-sha256:<hex>`` of a shard folder's index (which holds every shard's sha256);
    raises :class:`RegistryError` when the folder has not been sharded."""
    from glsim.data.shards import INDEX_NAME, file_sha256

    index = shards / INDEX_NAME
    if not index.is_file():
        raise RegistryError(f"{index} missing: shard the dataset (the shard stage) first")
    return f"index-sha256:{file_sha256(index)}"


def weights_digest(state_dict: dict[str, Any]) -> str:
    """sha256 over every tensor of a state dict: its name, dtype, shape and bytes."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# what is registered


@dataclass(frozen=True)
class Candidate:
    """The seed chosen to register for a (dataset, model), and what the choice compared."""

    dataset: str
    model: str
    seed: int
    lr: float
    run_dir: Path
    run_key: str  # the key its eval report was written under
    seed_top1: float  # the chosen seed's test top-1 (reported, not compared)
    top1_mean: float
    top1_std: float
    seeds: dict[str, float]  # test top-1 per seed (reported, not compared)
    train_loss: dict[str, float]  # final-epoch train loss per seed: what chose the seed
    val_top1: float | None = None  # the LR search's val top-1 at the chosen LR
    val_on: dict[str, str] = field(default_factory=dict)  # val_data, val_seeds, val_epochs


def _final_train_loss(run_dir: Path, dataset: str, model: str, seed: int) -> float:
    from glsim.train.run import load_history

    try:
        history = load_history(run_dir)
    except Exception as err:  # noqa: BLE001 - a missing or torn run folder: one line
        raise RegistryError(
            f"{dataset}/{model} seed {seed}: no training history in {run_dir} "
            f"({str(err).splitlines()[0][:160]}); train it first"
        ) from None
    loss = float(history[-1]["train/loss"]) if history else math.nan
    if not math.isfinite(loss):
        raise RegistryError(
            f"{dataset}/{model} seed {seed}: {run_dir} has no finite final train loss; "
            "train it again"
        )
    return loss


def search_measure(params: Params, model: str, lr: float) -> tuple[float | None, dict[str, str]]:
    """The LR search's val top-1 of ``model`` at ``lr`` and what it was measured on
    (``val_data``: the search split's shard index digest, ``val_seeds``, ``val_epochs``);
    ``(None, {})`` with no LR search (``protocol.lr_grid: []``)."""
    from glsim.protocol import chosen_lr, search_params, search_val_top1

    if not params.protocol.lr_grid:
        return None, {}
    chosen = chosen_lr(params, model)
    if f"{chosen:g}" != f"{lr:g}":
        raise RegistryError(
            f"{params.data.dataset}/{model}: the eval reports are of lr {lr:g} but the LR search "
            f"chose {chosen:g}; retrain and evaluate the seeds at the chosen LR first"
        )
    val = search_val_top1(params, model)  # each LR's report under its current run key
    on = {
        "val_data": index_digest(runs.shards_dir(params, "lrsearch")),
        "val_seeds": json.dumps([params.protocol.search_seed]),
        "val_epochs": str(search_params(params).train.epochs),
    }
    return float(val[f"{chosen:g}"]), on


def best_candidate(params: Params, dataset: str, model: str) -> Candidate:
    """Read every seed's eval report of ``model`` on ``dataset`` (``protocol.seeds``) and pick
    the seed to register by the rule of the module docstring (its test top-1 is not read)."""
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
    lrs = {f"{float(r['lr']):g}" for r in reports.values()}
    if len(lrs) != 1:
        raise RegistryError(
            f"{dataset}/{model}: the seeds' eval reports are of different LRs ({sorted(lrs)}); "
            "retrain and evaluate every seed at the chosen LR first"
        )
    run_dirs = {s: runs.RunSpec(model=model, seed=s).run_dir(p) for s in seeds}
    loss = {s: _final_train_loss(run_dirs[s], dataset, model, s) for s in seeds}
    best = min(seeds, key=lambda s: (loss[s], seeds.index(s)))
    lr = float(reports[best]["lr"])
    val_top1, val_on = search_measure(p, model, lr)
    entry = aggregate(reports.values())[reports[best]["dataset"]][reports[best]["model"]]
    return Candidate(
        dataset=dataset,
        model=model,
        seed=best,
        lr=lr,
        run_dir=run_dirs[best],
        run_key=str(reports[best].get("run_key") or ""),
        seed_top1=float(reports[best]["top1"]),
        top1_mean=float(entry["top1_mean"]),
        top1_std=float(entry["top1_std"]),
        seeds={str(k): float(v) for k, v in entry["seeds"].items()},
        train_loss={str(s): loss[s] for s in seeds},
        val_top1=val_top1,
        val_on=val_on,
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


def final_weights(cand: Candidate) -> tuple[str, str]:
    """The run folder's checkpoint key and the digest of its final model weights; the eval
    report must have been written for that checkpoint."""
    from glsim.errors import RunError
    from glsim.train.checkpoint import CHECKPOINT_NAME, read_checkpoint

    try:
        payload = read_checkpoint(cand.run_dir / CHECKPOINT_NAME)
    except RunError as err:
        raise RegistryError(str(err)) from None
    key = str(payload.get("extra", {}).get("run_key") or "")
    if not key or key != cand.run_key:
        raise RegistryError(
            f"{cand.run_dir}: the checkpoint's run key {key or '(none)'} is not the key its eval "
            f"report was written under ({cand.run_key or 'none'}); evaluate the run again"
        )
    return key, weights_digest(payload["model"])


def _runs_with_key(client: MlflowClient, params: Params, cand: Candidate, key: str) -> list:
    """The MLflow runs tagged ``run_key`` = ``key``: the run folder's own run first, then the
    others of its experiment (not superseded first, newest first)."""
    id_file = cand.run_dir / RUN_ID_FILE
    own = None
    if id_file.is_file():
        with contextlib.suppress(MlflowException):
            own = client.get_run(id_file.read_text().strip())
    if own is not None:
        experiment_ids = [own.info.experiment_id]
    else:
        exp = client.get_experiment_by_name(params.base.experiment)
        experiment_ids = [exp.experiment_id] if exp is not None else []
    found = []
    if experiment_ids:
        found = client.search_runs(
            experiment_ids, f"tags.run_key = '{key}'", max_results=50,
            order_by=["attributes.start_time DESC"],
        )  # fmt: skip
    found.sort(key=lambda r: "superseded_by" in r.data.tags)  # stable: newest first kept
    if own is not None and own.data.tags.get("run_key") == key:
        found = [own] + [r for r in found if r.info.run_id != own.info.run_id]
    return found


def _logged_models(client: MlflowClient, run) -> list[str]:
    """Ids of the models ``run`` logged as ``model``, newest first."""
    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"name = '{MODEL_ARTIFACT}' AND source_run_id = '{run.info.run_id}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
    )
    return [m.model_id for m in found]


def logged_weights(client: MlflowClient, model_id: str) -> str:
    """The weights digest of a logged (or registered: ``name/version``) model."""
    import tempfile

    import mlflow.pytorch
    from mlflow.artifacts import download_artifacts

    bar = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    shown = os.environ.get(bar)
    os.environ[bar] = "false"  # one line per command, not a progress bar per model
    try:
        with tempfile.TemporaryDirectory(prefix="glsim-registry-") as tmp:
            local = download_artifacts(
                artifact_uri=f"models:/{model_id}", dst_path=tmp,
                tracking_uri=client.tracking_uri, registry_uri=client._registry_uri,
            )  # fmt: skip
            net = mlflow.pytorch.load_model(local, map_location="cpu")
    finally:
        if shown is None:
            os.environ.pop(bar, None)
        else:
            os.environ[bar] = shown
    return weights_digest(net.state_dict())


def source_of(client: MlflowClient, params: Params, cand: Candidate) -> tuple[Any, str, str]:
    """``(run, model id, weights digest)``: the model logged for the run folder's checkpoint
    key by the MLflow run tagged with that key, whose weights are the checkpoint's."""
    key, digest = final_weights(cand)
    candidates = _runs_with_key(client, params, cand, key)
    if not candidates:
        raise RegistryError(
            f"no MLflow run in {client.tracking_uri} is tagged run_key {key} ({cand.run_dir}'s "
            f"checkpoint): if it was tracked while the server was down, run "
            f"`glsim tracking sync {cand.run_dir}` first; else train it with tracking on"
        )
    seen: list[str] = []
    for run in candidates:
        for model_id in _logged_models(client, run):
            if logged_weights(client, model_id) == digest:
                return run, model_id, digest
            seen.append(model_id)
    if not seen:
        run_id = candidates[0].info.run_id
        raise RegistryError(
            f"MLflow run {run_id} ({cand.run_dir}) has no logged model {MODEL_ARTIFACT!r}: "
            f"if its tracking server was down, run `glsim tracking sync {cand.run_dir}` first"
        )
    raise RegistryError(
        f"{cand.run_dir}: no model logged for run key {key} holds the run folder's final "
        f"weights (checkpoint sha256 {digest[:12]}; logged: {', '.join(seen)}); nothing "
        "registered: retrain the run with tracking on"
    )


def provenance(run, params: Params) -> dict[str, str]:
    """The provenance tags of the MLflow run that logged the model, copied from that run.
    A run that recorded no ``data_dvc_md5`` (no ``dvc.lock`` entry when it trained) gets the
    digest of the final shards' index in place now: the data it trained on unless the
    dataset was resharded since."""
    tags = run.data.tags
    out = {k: tags.get(k, "") for k in PROVENANCE_TAGS}
    out.update({k: v for k, v in tags.items() if k.startswith("runtime.")})
    if not out["data_dvc_md5"]:
        out["data_dvc_md5"] = index_digest(runs.shards_dir(params))
    return out


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
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
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
