"""The ViT baseline (Dosovitskiy et al., ICLR 2021): the timm ViT with the same backbone and
weights as GLSim, classifying from its CLS token; optionally with one extra transformer
block on the CLS token alone (Table 5, row 2: GLSim's aggregator without the crop).

Also the pieces the ViT-family baselines share: :class:`EncoderExplained` (the explanation
from the encoder's own GLS) and :class:`SelectedTokensViT` (TransFG and FFVT: the last block
over the CLS and selected tokens, a head on its CLS output).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from glsim.models.backbone import (
    DEFAULT_BACKBONE,
    DEFAULT_DROP_PATH_RATE,
    block_like,
    create_encoder,
    zeroed,
)
from glsim.models.gls import explain_with_encoder, gls_scores_and_boxes
from glsim.models.output import ModelOutput
from glsim.models.registry import register_model


class EncoderExplained:
    """Mixin for a model on a ViT ``self.encoder`` whose own pass does not yield patch
    tokens to explain with: the explanation is the encoder's GLS, from a second pass."""

    encoder: VisionTransformer

    def forward_explain(self, images: Tensor, *, top_k: int | None = None) -> ModelOutput:
        """Logits and, with ``top_k``, the encoder's GLS scores and boxes (a second pass)."""
        return explain_with_encoder(self.encoder, images, self(images), top_k=top_k)


class SelectedTokensViT(EncoderExplained, nn.Module):
    """A ViT whose ``forward_features`` (the subclass's) ends in the CLS token and a selection
    of patch tokens, (B, 1+K, D); a zero-initialised linear head classifies the CLS token.

    Raises:
        ValueError: ``encoder`` has other prefix tokens than one CLS token, or < 2 blocks.
    """

    def __init__(self, encoder: VisionTransformer, *, num_classes: int) -> None:
        super().__init__()
        if encoder.num_prefix_tokens != 1 or len(encoder.blocks) < 2:
            raise ValueError(
                f"{type(self).__name__} needs a ViT with one CLS token, no registers, and >= 2 blocks"
            )
        self.encoder = encoder
        self.encoder.reset_classifier(0)
        self.head = zeroed(nn.Linear(encoder.embed_dim, num_classes))

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) -> normalised (B, 1+K, D), the CLS token first (each model's own)."""
        raise NotImplementedError

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features[:, 0])  # (B, C)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))


class ViT(nn.Module):
    """A timm ViT (``encoder``) classifying from its CLS token; its head is zero-initialised,
    as GLSim's (same recipe for both)."""

    def __init__(self, encoder: VisionTransformer) -> None:
        super().__init__()
        self.encoder = encoder
        zeroed(self.encoder.head)

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder(images)  # (B, C)

    def forward_explain(self, images: Tensor, *, top_k: int | None = None) -> ModelOutput:
        """One encoder pass: logits, GLS scores of its tokens and, with ``top_k``, the boxes."""
        tokens = self.encoder.forward_features(images)  # (B, P+N, D)
        logits = self.encoder.forward_head(tokens)  # (B, C)
        scores, boxes = gls_scores_and_boxes(self.encoder, tokens, top_k=top_k)
        return ModelOutput(logits=logits, scores=scores, boxes=boxes)


class ViTClsBlock(EncoderExplained, nn.Module):
    """ViT + one transformer block over the CLS token only, then norm and head."""

    def __init__(self, encoder: VisionTransformer, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder.reset_classifier(0)
        self.block = block_like(encoder)
        self.norm = nn.LayerNorm(encoder.embed_dim, eps=1e-6)
        self.head = zeroed(nn.Linear(encoder.embed_dim, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        cls = self.encoder.forward_features(images)[:, :1]  # (B, 1, D)
        z = self.block(cls)  # (B, 1, D)
        return self.head(self.norm(z[:, 0]))  # (B, C)


@register_model("vit")
def build_vit(
    *,
    num_classes: int,
    image_size: int,
    backbone: str = DEFAULT_BACKBONE,
    backbone_overrides: dict[str, Any] | None = None,
    weights: str | Path | None = None,
    drop_path_rate: float = DEFAULT_DROP_PATH_RATE,
    cls_block: bool = False,
) -> ViT | ViTClsBlock:
    """The timm ViT ``backbone`` (``backbone_overrides``: its constructor arguments) with an
    optional local ``weights`` file; ``cls_block`` adds the extra CLS-only block."""
    encoder = create_encoder(
        backbone,
        backbone_overrides,
        image_size=image_size,
        weights=weights,
        drop_path_rate=drop_path_rate,
        num_classes=0 if cls_block else num_classes,
    )
    return ViTClsBlock(encoder, num_classes) if cls_block else ViT(encoder)
