"""TransFG baseline: He et al., "TransFG: A Transformer Architecture for Fine-Grained
Recognition", AAAI 2022 (reference code: TACJu/TransFG).

Three changes to a ViT, each a named step below:

1. Overlapping patch embedding (Sec. 3.1): the patchifier slides with stride < P (12 for
   P = 16), so neighbouring patches share pixels; position embeddings are resampled to the
   larger grid.
2. Part selection module, PSM (Sec. 3.2, Eq. 4-5): the first L-1 blocks run as usual;
   per head, their attention maps are multiplied and the CLS row's arg-max patch is kept.
   The CLS token and those H part tokens go through the last block alone, and the head
   classifies its CLS output.
3. Contrastive loss (Sec. 3.3, Eq. 6): on the normalised CLS features, pull same-class
   pairs to cosine 1 and push different-class pairs below a margin of 0.4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from glsim.models.attention import forward_blocks_with_attention, psm_scores
from glsim.models.backbone import DEFAULT_BACKBONE, DEFAULT_DROP_PATH_RATE, create_encoder
from glsim.models.registry import register_model
from glsim.models.vit import SelectedTokensViT


def overlap_patch_embed(vit: VisionTransformer, stride: int) -> None:
    """Make ``vit``'s patchifier slide with ``stride`` (TransFG Sec. 3.1), in place.

    The convolution keeps its (pretrained) kernel; only its stride changes. The grid grows
    to floor((S - P) / stride) + 1 per side and the position embeddings are resampled to it
    (bicubic, as TransFG resizes the pretrained ones).
    """
    embed = vit.patch_embed
    patch = embed.patch_size[0]
    if not 0 < stride <= patch:
        raise ValueError(f"TransFG stride must be in [1, patch_size={patch}], got {stride}")
    old_grid = embed.grid_size
    grid = tuple((side - patch) // stride + 1 for side in embed.img_size)
    embed.proj.stride = (stride, stride)
    embed.grid_size, embed.num_patches = grid, grid[0] * grid[1]
    resampled = resample_abs_pos_embed(
        vit.pos_embed.data,
        new_size=list(grid),
        old_size=list(old_grid),
        num_prefix_tokens=vit.num_prefix_tokens,
    )  # (1, prefix + G'^2, D)
    vit.pos_embed = nn.Parameter(resampled)


def contrastive_loss(features: Tensor, targets: Tensor, *, margin: float = 0.4) -> Tensor:
    """TransFG Eq. 6, as in its code: mean over all B^2 pairs of (1 - cos) for same-class
    pairs and max(cos - margin, 0) for different-class pairs.

    Args:
        features: (B, D) CLS features; targets: (B,) class indices.
    """
    features = F.normalize(features, dim=-1)
    cosine = features @ features.T  # (B, B)
    same = (targets[:, None] == targets[None, :]).to(cosine.dtype)  # (B, B)
    loss = same * (1 - cosine) + (1 - same) * (cosine - margin).clamp(min=0)
    return loss.mean()


class TransFG(SelectedTokensViT):
    """ViT + overlapping patches + part selection + contrastive loss."""

    def __init__(self, vit: VisionTransformer, *, num_classes: int, stride: int) -> None:
        super().__init__(vit, num_classes=num_classes)
        overlap_patch_embed(self.encoder, stride)

    def embed(self, images: Tensor) -> Tensor:
        """Overlapping patches + CLS + position: (B, 3, S, S) -> (B, 1+N, D)."""
        enc = self.encoder
        x = enc.patch_embed(images)  # (B, N, D)
        return enc.norm_pre(enc.patch_drop(enc._pos_embed(x)))  # (B, 1+N, D)

    def select_parts(self, x: Tensor, attns: list[Tensor]) -> Tensor:
        """PSM (Eq. 4-5): the CLS token and, per head, its most attended patch token.

        Args:
            x: (B, 1+N, D) output of block L-1; attns: its L-1 maps (B, H, 1+N, 1+N).

        Returns:
            (B, 1+H, D) tokens for the last block.
        """
        with torch.no_grad():  # an arg-max: no gradient flows through the selection
            _, part_index = psm_scores([a.detach() for a in attns])  # (B, H)
        token_index = (part_index + 1)[..., None].expand(-1, -1, x.shape[-1])  # (B, H, D)
        parts = x.gather(1, token_index)  # (B, H, D)
        return torch.cat([x[:, :1], parts], dim=1)  # (B, 1+H, D)

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) -> normalised (B, 1+H, D): CLS and part tokens after the last block."""
        x = self.embed(images)
        x, attns = forward_blocks_with_attention(self.encoder.blocks[:-1], x)  # (B, 1+N, D)
        x = self.encoder.blocks[-1](self.select_parts(x, attns))  # (B, 1+H, D)
        return self.encoder.norm(x)

    def training_loss(
        self, images: Tensor, targets: Tensor, criterion: nn.Module
    ) -> tuple[Tensor, Tensor]:
        """Classification loss + contrastive loss on the CLS feature (TransFG Eq. 7)."""
        features = self.forward_features(images)
        logits = self.forward_head(features)
        loss = criterion(logits, targets) + contrastive_loss(features[:, 0], targets)
        return loss, logits


@register_model("transfg")
def build_transfg(
    *,
    num_classes: int,
    image_size: int,
    backbone: str = DEFAULT_BACKBONE,
    backbone_overrides: dict[str, Any] | None = None,
    weights: str | Path | None = None,
    drop_path_rate: float = DEFAULT_DROP_PATH_RATE,
    stride: int | None = None,
) -> TransFG:
    """TransFG on the configured ViT. ``stride`` defaults to 3/4 of the patch size (TransFG's
    slide step of 12 for P = 16)."""
    vit = create_encoder(
        backbone,
        backbone_overrides,
        image_size=image_size,
        weights=weights,
        drop_path_rate=drop_path_rate,
    )
    if stride is None:
        stride = max(1, 3 * vit.patch_embed.patch_size[0] // 4)
    return TransFG(vit, num_classes=num_classes, stride=stride)
