"""One fine-tuning run, ``(dataset, model, seed)``, from params to a checkpoint in MLflow.

:func:`model_kwargs` is the one adapter from the params tree to a model's plain keyword
arguments (as DINOv2 turns its config into model kwargs in one place); :func:`build` makes
the model a run trains; :func:`train_run` trains it. Paths and run keys come from
:mod:`glsim.runs`; which runs exist and with which LR is the protocol's
(:mod:`glsim.protocol`), the layer the DVC stages and the cluster flows call.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glsim.config import Params, write_resolved
from glsim.data.loader import make_loader, num_batches
from glsim.data.shards import read_index
from glsim.data.transforms import build_transforms
from glsim.models import create_model
from glsim.models.backbone import pretrained_norm
from glsim.models.registry import check_model_name
from glsim.runs import (
    RunSpec,
    execution_settings,
    images_root,
    run_key,
    shard_source,
    shards_dir,
)
from glsim.train import distributed
from glsim.train.checkpoint import (
    CHECKPOINT_NAME,
    read_checkpoint,
    require_checkpoint,
    result_record,
)
from glsim.train.claim import claim_run
from glsim.train.loop import Recipe, fit, load_trained
from glsim.utils import (
    atomic_write_json,
    configure_determinism,
    resolve_device,
    seed_everything,
)

CNN_MODELS = ("resnet101", "cal")  # no ViT backbone; the paper applies stochastic depth to ViTs only


def num_classes(params: Params) -> int:
    """The class count C of the dataset: the head width, the loss and the per-class report
    all use this one number, the shard index's ``num_classes`` (labels are 0..C-1)."""
    return int(read_index(shard_source(params))["num_classes"])


def model_kwargs(params: Params, model_name: str) -> dict[str, Any]:
    """The keyword arguments ``create_model(model_name, ...)`` takes, from the params tree:
    the model's own section, the shared backbone (ViT models) and the recipe's drop-path."""
    section = getattr(params.model, model_name, None)
    kwargs: dict[str, Any] = section.model_dump() if section is not None else {}
    if model_name in CNN_MODELS:
        return {**kwargs, "drop_path_rate": 0.0}
    bb = params.model.backbone
    return {
        "backbone": bb.name,
        "backbone_overrides": dict(bb.overrides),
        "weights": bb.weights,
        "drop_path_rate": params.train.regularisation().drop_path,
        **kwargs,
    }


def build(params: Params, model_name: str) -> nn.Module:
    """The model a run of ``model_name`` trains, sized to the dataset's classes."""
    return create_model(
        model_name,
        num_classes=num_classes(params),
        image_size=params.data.image_size,
        **model_kwargs(params, model_name),
    )


def recipe(params: Params, lr: float | None = None) -> Recipe:
    t, reg = params.train, params.train.regularisation()
    return Recipe(
        epochs=t.epochs,
        lr=lr if lr is not None else t.lr,
        optimizer="momentum",
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        clip_grad=t.clip_grad,
        label_smoothing=reg.label_smoothing,
        amp=t.amp,
        cpu_amp=execution_settings(params)["precision"] == "bf16",
    )


def is_finished(run_dir: Path, key: str, epochs: int) -> bool:
    """Whether ``run_dir`` holds a finished run of this exact configuration."""
    ckpt = run_dir / CHECKPOINT_NAME
    if not ckpt.is_file():
        return False
    payload = read_checkpoint(ckpt)
    return payload.get("extra", {}).get("run_key") == key and payload["state"]["epoch"] >= epochs


def load_run(params: Params, spec: RunSpec) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a finished run and its loop state (epochs, steps, history)."""
    run_dir = spec.run_dir(params)
    require_checkpoint(run_dir / CHECKPOINT_NAME)  # a run never trained: said before building
    model = build(params, spec.model)
    state = load_trained(model, run_dir)
    if state["epoch"] < params.train.epochs:
        from glsim.errors import RunError

        raise RunError(
            f"{run_dir}: training stopped at epoch {state['epoch']} of {params.train.epochs}; "
            "rerun the train stage (it resumes from the checkpoint)"
        )
    return model, state


def train_run(
    params: Params, spec: RunSpec, *, track: bool = True, stop_after_epochs: int | None = None
) -> Path:
    """Fine-tune ``spec.model`` with ``spec.seed``; resumes a killed run. Returns the run dir.

    Writes ``last.pt`` (checkpoint, every epoch), ``train.json`` (per-epoch history, the
    run key, and the :func:`~glsim.train.checkpoint.result_record` of the process that
    finished the run: numerics profile, host, final weights' digest) and
    ``params.resolved.yaml`` into the run dir, and logs all of it to MLflow (the per-epoch
    ``train/loss`` and ``train/acc`` as metrics). Writes the run's curve, rows of ``epoch,
    loss, acc`` (:func:`curve_rows`), to ``spec.curve_path(params)``, also when the run had
    finished already (a curve deleted, or asked for by a newer ``dvc.yaml``, comes back).

    Started by ``torchrun --nproc_per_node N`` (e.g. ``torchrun --nproc_per_node 2
    pipelines/train.py --model glsim --seed 1``), the N processes train the run together
    with DistributedDataParallel (:mod:`glsim.train.distributed`): each rank reads every
    N-th sample and ``train.batch_size / N`` images per step, and rank 0 alone writes the
    run folder and tracks. The run key does not depend on N: a run finished by torchrun is
    not repeated by a single process; a killed one resumes only with the N it started with.

    One trainer at a time: the run folder is claimed (:func:`glsim.train.claim.claim_run`;
    under torchrun by rank 0) while it trains. A second trainer waits ``GLSIM_CLAIM_WAIT_S``
    seconds (default 0) and then raises :class:`~glsim.train.claim.RunClaimed`; if the
    first finished the run meanwhile, the second skips it as finished.
    """
    check_model_name(spec.model)  # before anything is written into the run folder
    dist, device = distributed.setup(resolve_device(params.base.device))
    configure_determinism(
        params.base.num_threads, params.base.deterministic, device, params.base.numerics
    )
    with claim_run(spec.run_dir(params), dist, root=params.base.runs_dir):
        return _train_claimed(
            params, spec, dist, device, track=track, stop_after_epochs=stop_after_epochs
        )


def _train_claimed(
    params: Params,
    spec: RunSpec,
    dist: distributed.Dist,
    device: torch.device,
    *,
    track: bool,
    stop_after_epochs: int | None,
) -> Path:
    """:func:`train_run`'s work, the run folder claimed: skip it when finished (by the
    trainer this one waited for, too), else train or resume it."""
    out = spec.run_dir(params)
    key = run_key(params, spec)
    if is_finished(out, key, recipe(params, spec.lr).epochs):
        if dist.is_main:
            print(
                f"{out}: already finished with this configuration (run key {key}); not repeated",
                flush=True,
            )
            write_curve(load_history(out), spec.curve_path(params))
        return out
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_resolved(params, out)
    seed_everything(spec.seed)  # the fresh aggregator/head init depends on the seed only
    model = build(params, spec.model)
    loader_for_epoch, steps = train_data(params, spec, model, dist, device)
    kwargs = dict(
        loader_for_epoch=loader_for_epoch, steps_per_epoch=steps, recipe=recipe(params, spec.lr),
        out_dir=out, seed=spec.seed, device=device, stop_after_epochs=stop_after_epochs,
        run_key=key, dist=dist, compile_step=params.base.compile,
    )  # fmt: skip
    if not dist.is_main:  # rank 0 alone tracks and writes the run folder
        fit(model, **kwargs)
        return out
    state = _fit_tracked(params, spec, model, **kwargs) if track else fit(model, **kwargs)
    atomic_write_json(
        out / "train.json",
        {
            "epochs_done": state.epoch, "steps": state.step, "history": state.history,
            "run_key": key, **result_record(model.state_dict()),
        },
    )  # fmt: skip
    write_curve(state.history, spec.curve_path(params))
    return out


def train_data(
    params: Params, spec: RunSpec, model: nn.Module, dist: distributed.Dist, device: torch.device
) -> tuple[Callable[[int], Iterable], int]:
    """``(loader_for_epoch, steps per epoch)`` of a run: its shards, shuffled per
    ``(seed, epoch)``, augmented as ``train.augreg`` says and normalised as ``model``'s
    backbone was pretrained (on ``device``, per batch); under torchrun this rank's share,
    every rank taking the fewest batches any rank has."""
    bs = distributed.per_rank_batch(params.train.batch_size, dist)
    mean, std = pretrained_norm(getattr(model, "encoder", model))
    transform = build_transforms(
        image_size=params.data.image_size,
        resize_ratio=params.data.resize_ratio,
        train=True,
        augreg=params.train.augreg,
        erasing_prob=params.train.regularisation().erasing_prob,
        mean=mean,
        std=std,
    )
    src = shard_source(params, spec.kind)  # data.shards_url when set
    sample_root = images_root(params, spec.kind)  # names a bad image by the user's file

    def epoch_steps(epoch: int) -> int:
        return min(
            num_batches(
                src, "train", batch_size=bs, workers=params.data.workers, drop_last=True,
                shuffle=True, seed=spec.seed, epoch=epoch, rank=r, world_size=dist.world_size,
            )  # fmt: skip
            for r in range(dist.world_size)
        )

    def loader_for_epoch(epoch: int) -> Iterable:
        loader = make_loader(
            src, "train", transform=transform, batch_size=bs, shuffle=True, seed=spec.seed,
            epoch=epoch, workers=params.data.workers, drop_last=True,
            rank=dist.rank, world_size=dist.world_size, images_root=sample_root, device=device,
        )  # fmt: skip
        return itertools.islice(loader, epoch_steps(epoch)) if dist.enabled else loader

    return loader_for_epoch, epoch_steps(0)


def _fit_tracked(params: Params, spec: RunSpec, model: nn.Module, **fit_kwargs: Any):
    """:func:`~glsim.train.loop.fit` inside an MLflow run (:class:`~glsim.tracking.mlflow.Tracker`):
    the params, the metrics of every epoch, the resolved params and, once finished, the
    checkpoint and the model with the dataset's class names."""
    from glsim.data.shards import read_class_names
    from glsim.tracking.mlflow import Tracker, dvc_hash

    rcp = fit_kwargs["recipe"]
    tags = {
        "dataset": params.data.dataset, "model": spec.model, "seed": str(spec.seed),
        "lr": f"{rcp.lr:g}", "kind": spec.kind, "variant": spec.name, "stage": "train",
        "data_dvc_md5": dvc_hash(shards_dir(params)), "params_hash": params.digest(),
    }  # fmt: skip
    out = fit_kwargs["out_dir"]
    with Tracker(
        experiment=params.base.experiment, run_name=spec.label(params), run_dir=out,
        tags=tags, run_key=fit_kwargs["run_key"],
    ) as tracker:  # fmt: skip
        tracker.log_params(params.model_dump(mode="json"))
        state = fit(model, log_metrics=tracker.log_metrics, **fit_kwargs)
        tracker.log_artifact(out / "params.resolved.yaml")
        if state.epoch >= rcp.epochs:
            tracker.log_artifact(out / "last.pt", artifact_path="checkpoint")
            tracker.log_model(
                model.cpu(), name="model", image_size=params.data.image_size,
                class_names=read_class_names(shard_source(params, spec.kind), num_classes(params)),
            )  # fmt: skip
    return state


def curve_rows(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """A run's per-epoch history as the flat rows ``dvc plots`` draws: ``epoch`` (1-based),
    ``loss`` (mean train loss) and ``acc`` (train top-1, %)."""
    return [
        {"epoch": int(h["epoch"]), "loss": h["train/loss"], "acc": h["train/acc"]} for h in history
    ]


def write_curve(history: list[dict[str, float]], path: Path) -> Path:
    return atomic_write_json(path, curve_rows(history))


def load_history(run_dir: Path) -> list[dict[str, float]]:
    """The per-epoch history of a run folder: ``train.json``'s, else the checkpoint's."""
    summary = run_dir / "train.json"
    if summary.is_file():
        return json.loads(summary.read_text())["history"]
    return read_checkpoint(run_dir / CHECKPOINT_NAME)["state"]["history"]


RECORD_KEYS = ("weights_sha256", "numerics", "host")  # train.json's result record


def load_record(run_dir: Path) -> dict[str, Any]:
    """The :func:`~glsim.train.checkpoint.result_record` ``train.json`` holds: weights
    digest, numerics profile and host (empty for a run trained before runs recorded it)."""
    summary = run_dir / "train.json"
    if not summary.is_file():
        return {}
    record = json.loads(summary.read_text())
    return {k: record[k] for k in RECORD_KEYS if k in record}
