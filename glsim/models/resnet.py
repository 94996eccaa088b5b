"""ResNet-101 baseline: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
as timm's ``resnet101``; ImageNet weights come from a local file, never the hub.
"""

from __future__ import annotations

from pathlib import Path

import timm
from timm.models.resnet import ResNet
from torch import Tensor, nn

from glsim.models.backbone import WeightsError, read_state_dict
from glsim.models.output import ModelOutput
from glsim.models.registry import register_model


def load_resnet_weights(model: ResNet, path: str | Path) -> None:
    """Load a local torchvision/timm ResNet checkpoint into ``model``, skipping ``fc``.

    Raises:
        WeightsError: naming the path and every missing, unexpected or mis-shaped key.
    """
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if mismatched or missing or unexpected:
        parts = [
            f"{label}: {keys[:8]}{' ...' if len(keys) > 8 else ''}"
            for label, keys in (
                ("shape mismatch", mismatched),
                ("missing keys", missing),
                ("unexpected keys", unexpected),
            )
            if keys
        ]
        raise WeightsError(
            f"{path}: does not fit {type(model).__name__} ({'; '.join(parts)}); "
            "expected a ResNet-101 state dict (torchvision or timm key names)"
        )
    model.load_state_dict(state, strict=False)


def create_resnet101(
    *, num_classes: int, weights: str | Path | None = None, drop_path_rate: float = 0.0, **kwargs
) -> ResNet:
    """timm ``resnet101`` (no download) with an optional local weights file (head skipped)."""
    model = timm.create_model(
        "resnet101",
        pretrained=False,
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )
    if weights is not None:
        load_resnet_weights(model, weights)
    return model


class ResNet101(nn.Module):
    """The timm ResNet-101 (``backbone``) as a registered model: logits, no region."""

    def __init__(self, backbone: ResNet) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(images)  # (B, C)

    def forward_explain(self, images: Tensor, *, top_k: int | None = None) -> ModelOutput:
        """Logits only: a CNN has no patch grid to explain with (``top_k`` is ignored)."""
        return ModelOutput(logits=self(images))


@register_model("resnet101")
def build_resnet101(
    *,
    num_classes: int,
    image_size: int,
    weights: str | Path | None = None,
    drop_path_rate: float = 0.0,
) -> ResNet101:
    """ResNet-101 with an optional local ImageNet ``weights`` file (its ``fc`` skipped);
    ``image_size`` is accepted for the common signature (any size works)."""
    return ResNet101(
        create_resnet101(num_classes=num_classes, weights=weights, drop_path_rate=drop_path_rate)
    )
