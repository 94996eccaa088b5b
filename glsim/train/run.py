"""One fine-tuning run, ``(dataset, model, seed)``, from params to a checkpoint in MLflow.

This is what the ``train`` DVC stage and the Prefect flow both call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from glsim.config import Params, write_resolved
from glsim.data.loader import make_loader, num_batches
from glsim.data.shards import read_index
from glsim.data.transforms import build_transforms
from glsim.models import create_model
from glsim.models.backbone import pretrained_norm
from glsim.train.loop import Recipe, fit
from glsim.utils import atomic_write_json, resolve_device, seed_everything, set_threads


@dataclass(frozen=True)
class RunSpec:
    """Identifies a run: which model on which data with which seed (and optional LR)."""

    model: str
    seed: int
    lr: float | None = None
    split: str = "train"  # "train" (final runs) or an LR-search split name

    def run_dir(self, params: Params) -> Path:
        lr = f"-lr{self.lr:g}" if self.lr is not None else ""
        return params.base.runs_dir / params.data.dataset / f"{self.model}{lr}" / f"seed{self.seed}"


def shards_dir(params: Params) -> Path:
    return params.data.shards_dir / params.data.dataset


def num_classes(params: Params) -> int:
    return len(read_index(shards_dir(params))["classes"])


CNN_MODELS = ("resnet101", "cal")  # the paper applies stochastic depth to ViTs only


def build(params: Params, model_name: str) -> nn.Module:
    """The model a run trains: shared backbone, the model's own params section, drop-path."""
    reg = params.train.regularisation()
    section = getattr(params.model, model_name, None)
    own = (
        {model_name: section}
        if model_name in ("vit", "glsim")
        else (section.model_dump() if section else {})
    )
    return create_model(
        model_name,
        num_classes=num_classes(params),
        image_size=params.data.image_size,
        backbone=params.model.backbone,
        drop_path_rate=0.0 if model_name in CNN_MODELS else float(reg["drop_path"]),
        **own,
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
        label_smoothing=float(reg["label_smoothing"]),
        amp=t.amp,
    )


def run_key(params: Params, spec: RunSpec) -> str:
    """Hash of everything that determines a run's result (not its tracking or scheduling)."""
    import hashlib
    import json
    from dataclasses import asdict

    d = params.data
    blob = {
        "spec": asdict(spec),
        "recipe": asdict(recipe(params, spec.lr)),
        "augreg": params.train.augreg,
        "regularisation": params.train.regularisation(),
        "batch_size": params.train.batch_size,
        "backbone": params.model.backbone.model_dump(mode="json"),
        "model": getattr(params.model, spec.model).model_dump(mode="json")
        if hasattr(params.model, spec.model)
        else {},
        "data": {"dataset": d.dataset, "image_size": d.image_size, "resize_ratio": d.resize_ratio},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_run(
    params: Params, spec: RunSpec, *, track: bool = True, stop_after_epochs: int | None = None
) -> Path:
    """Fine-tune ``spec.model`` with ``spec.seed``; resumes a killed run. Returns the run dir.

    Writes ``last.pt`` (checkpoint, every epoch), ``train.json`` (per-epoch history) and
    ``params.resolved.yaml`` into the run dir, and logs all of it to MLflow.
    """
    set_threads(params.base.num_threads)
    device = resolve_device(params.base.device)
    out = spec.run_dir(params)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved(params, out)
    seed_everything(spec.seed)  # the fresh aggregator/head init depends on the seed only
    model = build(params, spec.model)
    mean, std = pretrained_norm(getattr(model, "encoder", model))
    reg = params.train.regularisation()
    transform = build_transforms(
        image_size=params.data.image_size,
        resize_ratio=params.data.resize_ratio,
        train=True,
        augreg=params.train.augreg,
        erasing_prob=float(reg["erasing_prob"]),
        mean=mean,
        std=std,
    )
    src = shards_dir(params)
    bs = params.train.batch_size
    steps = num_batches(
        src,
        spec.split,
        batch_size=bs,
        workers=params.data.workers,
        drop_last=True,
        shuffle=True,
        seed=spec.seed,
        epoch=0,
    )

    def loader_for_epoch(epoch: int):
        return make_loader(
            src, spec.split, transform=transform, batch_size=bs, shuffle=True, seed=spec.seed,
            epoch=epoch, workers=params.data.workers, drop_last=True,
        )  # fmt: skip

    rcp = recipe(params, spec.lr)
    kwargs = dict(
        loader_for_epoch=loader_for_epoch, steps_per_epoch=steps, recipe=rcp, out_dir=out,
        seed=spec.seed, device=device, stop_after_epochs=stop_after_epochs, run_key=run_key(params, spec),
    )  # fmt: skip
    if not track:
        state = fit(model, **kwargs)
    else:
        from glsim.tracking.mlflow import Tracker, dvc_hash

        tags = {
            "dataset": params.data.dataset, "model": spec.model, "seed": str(spec.seed),
            "lr": f"{rcp.lr:g}", "split": spec.split, "stage": "train",
            "data_dvc_md5": dvc_hash(src), "params_hash": params.digest(),
        }  # fmt: skip
        run_name = f"{params.data.dataset}/{spec.model}/seed{spec.seed}"
        with Tracker(
            experiment=params.base.experiment, run_name=run_name, run_dir=out, tags=tags
        ) as tracker:
            tracker.log_params(params.model_dump(mode="json"))
            state = fit(model, log_metrics=tracker.log_metrics, **kwargs)
            tracker.log_artifact(out / "params.resolved.yaml")
            if state.epoch >= rcp.epochs:
                tracker.log_artifact(out / "last.pt", artifact_path="checkpoint")
                tracker.log_model(model.cpu(), name="model")
    atomic_write_json(
        out / "train.json",
        {"epochs_done": state.epoch, "steps": state.step, "history": state.history},
    )
    return out
