"""FFVT baseline: Wang et al., "Feature Fusion Vision Transformer for Fine-Grained Visual
Categorization", BMVC 2021 (reference code: Markin-Wang/FFVT).

1. Mutual attention weight selection, MAWS (Sec. 3.2, Eq. 6-8): after each of the first
   L-1 blocks, score every token by (CLS row of the attention weights) x (CLS column of the
   scores, softmax over tokens), head-averaged, and keep that layer's top-K tokens.
2. Feature fusion (Sec. 3.1): the final CLS token and the (L-1) K selected tokens go
   through the last block alone; the head classifies its CLS output.

Plain non-overlapping patches and the plain classification loss, as the paper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from glsim.models.attention import block_with_attention, maws_scores
from glsim.models.backbone import DEFAULT_BACKBONE, DEFAULT_DROP_PATH_RATE, create_encoder
from glsim.models.registry import register_model
from glsim.models.vit import SelectedTokensViT


def select_tokens(x: Tensor, scores: Tensor, top_k: int) -> Tensor:
    """The ``top_k`` patch tokens of ``x`` (B, 1+N, D) by ``scores`` (B, N): (B, top_k, D)."""
    with torch.no_grad():
        index = scores.topk(top_k, dim=-1).indices + 1  # (B, K) token indices, CLS skipped
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))  # (B, K, D)


class FFVT(SelectedTokensViT):
    """ViT whose last block fuses the MAWS-selected tokens of every earlier layer."""

    def __init__(self, vit: VisionTransformer, *, num_classes: int, tokens_per_layer: int) -> None:
        super().__init__(vit, num_classes=num_classes)
        num_patches = vit.patch_embed.num_patches
        if not 1 <= tokens_per_layer <= num_patches:
            raise ValueError(
                f"FFVT tokens_per_layer must be in [1, {num_patches}] (the patch count), got {tokens_per_layer}"
            )
        self.tokens_per_layer = tokens_per_layer

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) -> normalised (B, 1 + (L-1) K, D): CLS and fused tokens."""
        enc = self.encoder
        x = enc.patch_embed(images)  # (B, N, D)
        x = enc.norm_pre(enc.patch_drop(enc._pos_embed(x)))  # (B, 1+N, D)
        selected = []
        for block in enc.blocks[:-1]:
            x, logits = block_with_attention(block, x)  # (B, 1+N, D), (B, H, 1+N, 1+N)
            scores = maws_scores(logits.detach())  # (B, N)
            selected.append(select_tokens(x, scores, self.tokens_per_layer))  # (B, K, D)
        fused = torch.cat([x[:, :1], *selected], dim=1)  # (B, 1 + (L-1) K, D)
        return enc.norm(enc.blocks[-1](fused))


@register_model("ffvt")
def build_ffvt(
    *,
    num_classes: int,
    image_size: int,
    backbone: str = DEFAULT_BACKBONE,
    backbone_overrides: dict[str, Any] | None = None,
    weights: str | Path | None = None,
    drop_path_rate: float = DEFAULT_DROP_PATH_RATE,
    tokens_per_layer: int = 12,
) -> FFVT:
    """FFVT on the configured ViT; ``tokens_per_layer`` is the paper's K (12 in the
    reference's default config)."""
    vit = create_encoder(
        backbone,
        backbone_overrides,
        image_size=image_size,
        weights=weights,
        drop_path_rate=drop_path_rate,
    )
    return FFVT(vit, num_classes=num_classes, tokens_per_layer=tokens_per_layer)
