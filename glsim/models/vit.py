"""The ViT baseline (Dosovitskiy et al., ICLR 2021): the timm ViT with the same backbone and
weights as GLSim, classifying from its CLS token; optionally with one extra transformer
block on the CLS token alone (Table 5, row 2: GLSim's aggregator without the crop)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from glsim.models.backbone import create_vit
from glsim.models.gls import explain_with_encoder, gls_scores_and_boxes
from glsim.models.output import ModelOutput
from glsim.models.registry import register_model


class ViT(nn.Module):
    """A timm ViT (``encoder``) classifying from its CLS token; its head is zero-initialised,
    as GLSim's (same recipe for both)."""

    def __init__(self, encoder: VisionTransformer) -> None:
        super().__init__()
        self.encoder = encoder
        nn.init.zeros_(self.encoder.head.weight)
        nn.init.zeros_(self.encoder.head.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder(images)  # (B, C)

    def forward_explain(self, images: Tensor, *, top_k: int | None = None) -> ModelOutput:
        """One encoder pass: logits, GLS scores of its tokens and, with ``top_k``, the boxes."""
        tokens = self.encoder.forward_features(images)  # (B, P+N, D)
        logits = self.encoder.forward_head(tokens)  # (B, C)
        scores, boxes = gls_scores_and_boxes(self.encoder, tokens, top_k=top_k)
        return ModelOutput(logits=logits, scores=scores, boxes=boxes)


class ViTClsBlock(nn.Module):
    """ViT + one transformer block over the CLS token only, then norm and head."""

    def __init__(self, encoder: VisionTransformer, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder.reset_classifier(0)
        dim, block0 = encoder.embed_dim, encoder.blocks[0]
        self.block = Block(
            dim,
            num_heads=block0.attn.num_heads,
            mlp_ratio=block0.mlp.fc1.out_features / dim,
            qkv_bias=block0.attn.qkv.bias is not None,
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: Tensor) -> Tensor:
        cls = self.encoder.forward_features(images)[:, :1]  # (B, 1, D)
        z = self.block(cls)  # (B, 1, D)
        return self.head(self.norm(z[:, 0]))  # (B, C)

    def forward_explain(self, images: Tensor, *, top_k: int | None = None) -> ModelOutput:
        """Logits and, with ``top_k``, the encoder's GLS scores and boxes (a second pass)."""
        return explain_with_encoder(self.encoder, images, self(images), top_k=top_k)


@register_model("vit")
def build_vit(
    *,
    num_classes: int,
    image_size: int,
    backbone: str = "vit_base_patch16_224",
    backbone_overrides: dict[str, Any] | None = None,
    weights: str | Path | None = None,
    drop_path_rate: float = 0.0,
    cls_block: bool = False,
) -> ViT | ViTClsBlock:
    """The timm ViT ``backbone`` (``backbone_overrides``: its constructor arguments) with an
    optional local ``weights`` file; ``cls_block`` adds the extra CLS-only block."""
    encoder = create_vit(
        backbone,
        image_size=image_size,
        num_classes=0 if cls_block else num_classes,
        weights=weights,
        drop_path_rate=drop_path_rate,
        **(backbone_overrides or {}),
    )
    return ViTClsBlock(encoder, num_classes) if cls_block else ViT(encoder)
