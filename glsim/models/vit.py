"""The ViT baseline (Dosovitskiy et al., ICLR 2021): the timm ViT with the same backbone and
weights as GLSim, classifying from its CLS token; optionally with one extra transformer
block on the CLS token alone (Table 5, row 2: GLSim's aggregator without the crop)."""

from __future__ import annotations

from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from glsim.config import BackboneParams, VitParams
from glsim.models.backbone import create_vit
from glsim.models.registry import register_model


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


@register_model("vit")
def build_vit(
    *,
    num_classes: int,
    image_size: int,
    backbone: BackboneParams | None = None,
    vit: VitParams | None = None,
    drop_path_rate: float = 0.0,
    **_: object,
) -> nn.Module:
    """Plain timm ViT; the head is zero-initialised, as GLSim's (same recipe for both)."""
    backbone = backbone or BackboneParams()
    vit = vit or VitParams()
    model = create_vit(
        backbone.name,
        image_size=image_size,
        num_classes=0 if vit.cls_block else num_classes,
        weights=backbone.weights,
        drop_path_rate=drop_path_rate,
        **backbone.overrides,
    )
    if vit.cls_block:
        return ViTClsBlock(model, num_classes)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    return model
