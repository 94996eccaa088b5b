"""One fine-tuning run, ``(dataset, model, seed)``, from params to a checkpoint in MLflow.

This is what the ``train`` DVC stage and the Prefect flow both call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn

from glsim.config import Params, write_resolved
from glsim.data.loader import make_loader, num_batches
from glsim.data.lrsearch import LR_SEARCH_DIR
from glsim.data.shards import read_index
from glsim.data.transforms import build_transforms
from glsim.models import create_model
from glsim.models.backbone import pretrained_norm
from glsim.models.registry import check_model_name
from glsim.train.loop import Recipe, fit
from glsim.utils import atomic_write_json, resolve_device, seed_everything, set_threads

RunKind = Literal["final", "lrsearch", "ablation"]


@dataclass(frozen=True)
class RunSpec:
    """Identifies a run: which model (or ablation variant) with which seed and LR.

    ``final`` runs train on the whole train split (Table 4); ``lrsearch`` runs train on the
    search split's train part and are scored on its val part; ``ablation`` runs are the
    named variants of ``ablations.variants``.
    """

    model: str
    seed: int
    lr: float | None = None
    kind: RunKind = "final"
    variant: str | None = None

    @property
    def name(self) -> str:
        return self.variant or self.model

    def label(self, params: Params) -> str:
        """The MLflow run name: ``dataset/[kind/]name[/lrX]/seedS``."""
        parts = [params.data.dataset]
        if self.kind != "final":
            parts.append(self.kind)
        parts.append(self.name)
        if self.kind == "lrsearch":
            parts.append(f"lr{self.lr:g}")
        return "/".join([*parts, f"seed{self.seed}"])

    def run_dir(self, params: Params) -> Path:
        root = params.base.runs_dir / params.data.dataset
        if self.kind == "lrsearch":
            return root / "lrsearch" / self.model / f"lr{self.lr:g}" / f"seed{self.seed}"
        if self.kind == "ablation":
            return root / "ablation" / self.name / f"seed{self.seed}"
        return root / self.model / f"seed{self.seed}"


def shards_dir(params: Params, kind: RunKind = "final") -> Path:
    """The shard folder a run of ``kind`` reads (LR-search runs read the train/val split)."""
    root = params.data.shards_dir / params.data.dataset
    return root / LR_SEARCH_DIR if kind == "lrsearch" else root


def num_classes(params: Params) -> int:
    """The class count C of the dataset: the head width, the loss and the per-class report
    all use this one number, the shard index's ``num_classes`` (labels are 0..C-1)."""
    return int(read_index(shards_dir(params))["num_classes"])


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


def is_finished(run_dir: Path, key: str, epochs: int) -> bool:
    """Whether ``run_dir`` holds a finished run of this exact configuration."""
    from glsim.train.checkpoint import CHECKPOINT_NAME, read_checkpoint

    ckpt = run_dir / CHECKPOINT_NAME
    if not ckpt.is_file():
        return False
    payload = read_checkpoint(ckpt)
    return payload.get("extra", {}).get("run_key") == key and payload["state"]["epoch"] >= epochs


def train_run(
    params: Params, spec: RunSpec, *, track: bool = True, stop_after_epochs: int | None = None
) -> Path:
    """Fine-tune ``spec.model`` with ``spec.seed``; resumes a killed run. Returns the run dir.

    Writes ``last.pt`` (checkpoint, every epoch), ``train.json`` (per-epoch history) and
    ``params.resolved.yaml`` into the run dir, and logs all of it to MLflow.
    """
    check_model_name(spec.model)  # before anything is written into the run folder
    set_threads(params.base.num_threads)
    device = resolve_device(params.base.device)
    out = spec.run_dir(params)
    key = run_key(params, spec)
    if is_finished(out, key, recipe(params, spec.lr).epochs):
        print(
            f"{out}: already finished with this configuration (run key {key}); not repeated",
            flush=True,
        )
        return out
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
    src = shards_dir(params, spec.kind)
    bs = params.train.batch_size
    steps = num_batches(
        src,
        "train",
        batch_size=bs,
        workers=params.data.workers,
        drop_last=True,
        shuffle=True,
        seed=spec.seed,
        epoch=0,
    )

    def loader_for_epoch(epoch: int):
        return make_loader(
            src, "train", transform=transform, batch_size=bs, shuffle=True, seed=spec.seed,
            epoch=epoch, workers=params.data.workers, drop_last=True,
        )  # fmt: skip

    rcp = recipe(params, spec.lr)
    kwargs = dict(
        loader_for_epoch=loader_for_epoch, steps_per_epoch=steps, recipe=rcp, out_dir=out,
        seed=spec.seed, device=device, stop_after_epochs=stop_after_epochs, run_key=key,
    )  # fmt: skip
    if not track:
        state = fit(model, **kwargs)
    else:
        from glsim.tracking.mlflow import Tracker, dvc_hash

        tags = {
            "dataset": params.data.dataset, "model": spec.model, "seed": str(spec.seed),
            "lr": f"{rcp.lr:g}", "kind": spec.kind, "variant": spec.name, "stage": "train",
            "data_dvc_md5": dvc_hash(shards_dir(params)), "params_hash": params.digest(), "run_key": key,
        }  # fmt: skip
        with Tracker(
            experiment=params.base.experiment, run_name=spec.label(params), run_dir=out, tags=tags
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
