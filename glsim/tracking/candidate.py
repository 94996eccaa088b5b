"""What :mod:`glsim.tracking.registry` registers for a (dataset, model): the seed chosen
(:func:`best_candidate`, by final train loss), the measure versions are compared by
(:func:`search_measure`, the LR search's val top-1), and the logged model that holds the run
folder's final weights (:func:`source_of`) with the provenance of the run that logged it
(:func:`provenance`). The rules, and why, are in the registry's module docstring."""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from glsim import runs
from glsim.config import Params, for_dataset
from glsim.errors import RegistryError
from glsim.tracking.mlflow import RUN_ID_FILE
from glsim.train.checkpoint import weights_digest

MODEL_ARTIFACT = "model"  # the name training logs its model under (``runs:/<id>/model``)
SELECTED_BY = (
    "seed: lowest final-epoch train loss (fit; test never read); "
    "champion: val_top1, the LR search's val top-1 at the chosen LR (held out from the search run)"
)
PROVENANCE_TAGS = ("run_key", "params_hash", "data_dvc_md5", "git_commit")


def index_digest(shards: Path) -> str:
    """``index-sha256:<hex>`` of a shard folder's index (which holds every shard's sha256);
    raises :class:`RegistryError` when the folder has not been sharded."""
    from glsim.data.shards import INDEX_NAME, file_sha256

    index = shards / INDEX_NAME
    if not index.is_file():
        raise RegistryError(f"{index} missing: shard the dataset (the shard stage) first")
    return f"index-sha256:{file_sha256(index)}"


# ---------------------------------------------------------------------------------------
# the seed and its measures


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
    from glsim.protocol.specs import chosen_lr, search_params, search_val_top1

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
    the seed to register: the lowest final train loss (ties: the earlier seed); the test
    top-1 is reported, not read for the choice. Every report must be of its run's current
    key (:class:`RegistryError` otherwise)."""
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
    stale = [
        f"{paths[s]} (key {r.get('run_key')})"
        for s, r in reports.items()
        if r.get("run_key") != runs.run_key(p, runs.RunSpec(model, s, lr=float(r["lr"])))
    ]
    if stale:  # seeds of two configurations are never averaged, nor one registered
        raise RegistryError(
            f"{dataset}/{model}: eval report(s) not of the runs' current key (their data, "
            f"backbone, code or params changed since): {', '.join(stale)}; retrain and "
            "evaluate them first (dvc repro)"
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
    """The weights digest of the logged model ``model_id`` (downloaded and unpickled)."""
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
                tracking_uri=client.tracking_uri, registry_uri=client.tracking_uri,
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
