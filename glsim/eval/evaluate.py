"""Test-split evaluation of a trained run: top-1, per-class accuracy and, where the dataset
has object boxes, how often the model's crop (GLS for a plain ViT) lands on the object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from glsim.config import Params
from glsim.data.loader import make_loader
from glsim.data.transforms import build_transforms, eval_box_transform
from glsim.eval.localisation import gls_boxes_from_tokens, hit_rates, vit_gls_boxes
from glsim.models.backbone import pretrained_norm
from glsim.models.glsim import GLSim
from glsim.train.checkpoint import CHECKPOINT_NAME, require_checkpoint
from glsim.train.loop import load_trained
from glsim.train.run import RunSpec, build, num_classes, shards_dir
from glsim.utils import atomic_write_json, resolve_device, set_threads


def eval_loader(params: Params, model: nn.Module, split: str = "test", kind: str = "final"):
    mean, std = pretrained_norm(getattr(model, "encoder", model))
    transform = build_transforms(
        image_size=params.data.image_size,
        resize_ratio=params.data.resize_ratio,
        train=False,
        mean=mean,
        std=std,
    )
    return make_loader(
        shards_dir(params, kind), split, transform=transform, batch_size=params.eval.batch_size,
        shuffle=False, seed=0, epoch=0, workers=params.data.workers, with_meta=True,
    )  # fmt: skip


@torch.no_grad()
def predict(
    model: nn.Module, loader, device: torch.device, *, top_k: int, resize_ratio: float
) -> dict[str, Any]:
    """Labels, predictions, crop boxes and object boxes (model-input pixels) over a loader."""
    model.eval().to(device)
    labels, preds, boxes, targets = [], [], [], []
    for images, y, meta in loader:
        images = images.to(device)
        if isinstance(model, GLSim):
            out = model.forward_explain(images)
            logits, crop = out.logits, out.boxes
        elif isinstance(model, VisionTransformer):  # one encoder pass for logits and boxes
            tokens = model.forward_features(images)  # (B, 1+N, D)
            logits = model.forward_head(tokens)
            crop = gls_boxes_from_tokens(model, tokens, top_k=top_k)
        else:
            logits = model(images)
            vit = getattr(model, "encoder", model)
            crop = (
                vit_gls_boxes(vit, images, top_k=top_k)
                if hasattr(vit, "patch_embed") and hasattr(vit, "cls_token")
                else None
            )
        labels.append(y)
        preds.append(logits.argmax(-1).cpu())
        if crop is not None and "box" in meta and "size" in meta:
            boxes.append(crop.cpu())
            targets.append(
                torch.from_numpy(
                    eval_box_transform(
                        meta["box"].numpy(), meta["size"].numpy(),
                        image_size=images.shape[-1], resize_ratio=resize_ratio,
                    )
                ).float()
            )  # fmt: skip
    return {
        "labels": torch.cat(labels).numpy(),
        "preds": torch.cat(preds).numpy(),
        "boxes": torch.cat(boxes) if boxes else None,
        "targets": torch.cat(targets) if targets else None,
    }


def accuracy_report(labels: np.ndarray, preds: np.ndarray, class_count: int) -> dict[str, Any]:
    """Top-1 (%) and per-class accuracy (%) (NaN-free: absent classes are left out)."""
    per_class = {}
    for c in range(class_count):
        mask = labels == c
        if mask.any():
            per_class[str(c)] = round(100.0 * float((preds[mask] == c).mean()), 4)
    return {
        "top1": round(100.0 * float((labels == preds).mean()), 4),
        "mean_per_class": round(float(np.mean(list(per_class.values()))), 4),
        "per_class": per_class,
        "count": int(labels.size),
    }


def evaluate_run(
    params: Params, spec: RunSpec, out_path: str | Path, *, track: bool = True
) -> dict[str, Any]:
    """Evaluate a finished run on its test split (val for LR-search runs); write ``out_path``."""
    set_threads(params.base.num_threads)
    device = resolve_device(params.base.device)
    run_dir = spec.run_dir(params)
    require_checkpoint(run_dir / CHECKPOINT_NAME)  # never trained: say so before anything
    model = build(params, spec.model)
    state = load_trained(model, run_dir)
    if state["epoch"] < params.train.epochs:
        from glsim.errors import RunError

        raise RunError(
            f"{run_dir}: training stopped at epoch {state['epoch']} of {params.train.epochs}; rerun the train stage"
        )
    loader = eval_loader(params, model, kind=spec.kind)
    result = predict(
        model, loader, device, top_k=params.model.glsim.top_k, resize_ratio=params.data.resize_ratio
    )
    report: dict[str, Any] = {
        "dataset": params.data.dataset,
        "model": spec.name,
        "base_model": spec.model,
        "kind": spec.kind,
        "seed": spec.seed,
        "lr": spec.lr if spec.lr is not None else params.train.lr,
        **accuracy_report(result["labels"], result["preds"], num_classes(params)),
    }
    if result["boxes"] is not None:
        report["localisation"] = {
            k: round(v, 4)
            for k, v in hit_rates(
                result["boxes"], result["targets"], params.data.image_size
            ).items()
        }
    atomic_write_json(out_path, report)
    if track:
        from glsim.tracking.mlflow import Tracker

        with Tracker(
            experiment=params.base.experiment,
            run_name=spec.label(params),
            run_dir=run_dir,
        ) as tracker:
            split = "val" if spec.kind == "lrsearch" else "test"  # the search scores its val part
            flat = {
                f"{split}/top1": report["top1"],
                f"{split}/mean_per_class": report["mean_per_class"],
            }
            flat.update({f"{split}/{k}": v for k, v in report.get("localisation", {}).items()})
            tracker.log_metrics(flat)
            tracker.log_artifact(out_path, artifact_path="eval")
    return report
