"""``ModelOutput``: what every registered model's ``forward_explain`` returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(kw_only=True)
class ModelOutput:
    """A prediction and, where the model has one, the region it explains it with.

    ``scores`` and ``boxes`` are ``None`` for models without a patch grid (the CNNs) and,
    for the ViT baselines, where no ``top_k`` was asked for.
    """

    logits: Tensor  # (B, C)
    scores: Tensor | None = None  # (B, N) per-patch selector scores; larger = more selected
    boxes: Tensor | None = None  # (B, 4) int64 (x0, y0, x1, y1) in input pixels, half-open
