"""Test-split evaluation of a trained model: top-1, per-class accuracy, and the crop boxes
each model explains its prediction with (its own crop, or the GLS box of its ViT encoder),
beside the object boxes where the dataset has them.

Pure functions of a model and a loader; reading a run folder and writing its report is the
protocol's (:func:`glsim.protocol.evaluate.evaluate_run`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from glsim.config import Params
from glsim.data.loader import make_loader, num_batches
from glsim.data.transforms import build_transforms, eval_box_transform
from glsim.models.backbone import pretrained_norm
from glsim.progress import progress
from glsim.utils import atomic_write_text


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


def eval_loader(
    params: Params,
    model: nn.Module,
    shards: str | Path,
    split: str = "test",
    images_root: str | Path | None = None,
    device: torch.device | str = "cpu",
):
    """The evaluation loader of ``shards``/``split`` in the model's own preprocessing,
    its batches finished on ``device``; ``images_root`` (:func:`glsim.runs.images_root`)
    names a bad image by the user's file."""
    return make_loader(
        shards, split, transform=eval_transform(params, model), **_eval_batching(params),
        with_meta=True, images_root=images_root, device=device,
    )  # fmt: skip


def eval_batches(params: Params, shards: str | Path, split: str = "test") -> int:
    """How many batches :func:`eval_loader` yields (the evaluation bar's total)."""
    return num_batches(shards, split, drop_last=False, **_eval_batching(params))


def _eval_batching(params: Params) -> dict[str, Any]:
    return dict(
        batch_size=params.eval.batch_size, shuffle=False, seed=0, epoch=0,
        workers=params.data.workers,
    )  # fmt: skip


@torch.no_grad()
def predict(
    model: nn.Module,
    loader,
    device: torch.device,
    *,
    top_k: int,
    resize_ratio: float,
    total: int | None = None,
) -> dict[str, Any]:
    """Labels, predictions, crop boxes and object boxes (model-input pixels) over a loader.

    Every model answers ``forward_explain(images, top_k=...)`` (one contract, see
    :class:`glsim.models.output.ModelOutput`): logits, and boxes where it has them. On a
    terminal a bar counts the ``total`` batches (:mod:`glsim.progress`).
    """
    model.eval().to(device)
    labels, preds, boxes, targets = [], [], [], []
    for images, y, meta in progress(loader, total=total, desc="evaluate", unit="batch"):
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
    """Top-1 (%), the mean of the per-class accuracies (%) over the classes present, and the
    image count: the metrics of a report (the per-class table is :func:`per_class_table`)."""
    table = per_class_table(labels, preds, [str(c) for c in range(class_count)])
    present = table[table["count"] > 0]
    return {
        "top1": round(100.0 * float((labels == preds).mean()), 4),
        "mean_per_class": round(float(np.mean(present["accuracy"].tolist())), 4),
        "count": int(labels.size),
    }


def per_class_table(labels: np.ndarray, preds: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """One row per class ``0..C-1``: ``class_index, class_name, count, correct, accuracy``
    (%, rounded to 4 places; empty for a class with no image)."""
    class_count = len(class_names)
    count = np.bincount(labels, minlength=class_count)[:class_count]
    correct = np.bincount(labels[labels == preds], minlength=class_count)[:class_count]
    # 100 * (correct / count) and Python's round: the values (and so the mean_per_class)
    # the report computed before the table existed, to the last bit
    accuracy = [
        round(100.0 * float(k / n), 4) if n else float("nan")
        for k, n in zip(correct.tolist(), count.tolist(), strict=True)
    ]
    return pd.DataFrame(
        {
            "class_index": np.arange(class_count),
            "class_name": class_names,
            "count": count,
            "correct": correct,
            "accuracy": accuracy,
        }
    )


def write_per_class(table: pd.DataFrame, path: str | Path) -> Path:
    """``table`` as CSV at ``path`` (written atomically)."""
    return atomic_write_text(path, table.to_csv(index=False))
