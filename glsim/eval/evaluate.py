"""Test-split evaluation of a trained model: top-1, per-class accuracy, and the crop boxes
each model explains its prediction with (its own crop, or the GLS box of its ViT encoder),
beside the object boxes where the dataset has them.

Pure functions of a model and a loader; reading a run folder and writing its report is the
protocol's (:func:`glsim.protocol.evaluate_run`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from glsim.config import Params
from glsim.data.loader import make_loader
from glsim.data.transforms import build_transforms, eval_box_transform
from glsim.models.backbone import pretrained_norm


def eval_transform(params: Params, model: nn.Module):
    """The evaluation preprocessing of a model: the run's size and resize ratio, and the
    normalisation of its (ViT) encoder. Evaluation, the probe and ``glsim predict`` use it."""
    mean, std = pretrained_norm(getattr(model, "encoder", model))
    return build_transforms(
        image_size=params.data.image_size,
        resize_ratio=params.data.resize_ratio,
        train=False,
        mean=mean,
        std=std,
    )


def eval_loader(params: Params, model: nn.Module, shards: str | Path, split: str = "test"):
    """The evaluation loader of ``shards``/``split`` in the model's own preprocessing."""
    return make_loader(
        shards, split, transform=eval_transform(params, model), batch_size=params.eval.batch_size,
        shuffle=False, seed=0, epoch=0, workers=params.data.workers, with_meta=True,
    )  # fmt: skip


@torch.no_grad()
def predict(
    model: nn.Module, loader, device: torch.device, *, top_k: int, resize_ratio: float
) -> dict[str, Any]:
    """Labels, predictions, crop boxes and object boxes (model-input pixels) over a loader.

    Every model answers ``forward_explain(images, top_k=...)`` (one contract, see
    :class:`glsim.models.output.ModelOutput`): logits, and boxes where it has them.
    """
    model.eval().to(device)
    labels, preds, boxes, targets = [], [], [], []
    for images, y, meta in loader:
        images = images.to(device)
        out = model.forward_explain(images, top_k=top_k)
        labels.append(y)
        preds.append(out.logits.argmax(-1).cpu())
        if out.boxes is not None and "box" in meta and "size" in meta:
            boxes.append(out.boxes.cpu())
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
