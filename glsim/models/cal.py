"""CAL baseline: Rao et al., "Counterfactual Attention Learning for Fine-Grained Visual
Categorization and Re-identification", ICCV 2021 (reference code: raoyongming/CAL, fgvc/),
on a ResNet-101, built on WS-DAN (Hu et al., arXiv:1901.09891).

1. Attention maps (WS-DAN): a 1x1 conv + BN + ReLU turns the ResNet features F
   (B, C, h, w) into M attention maps A (B, M, h, w).
2. Bilinear attention pooling (Eq. 2): f = normalise(signed_sqrt(A F^T / hw)) (B, M C);
   logits Y = W (100 f).
3. Counterfactual intervention (Eq. 5-6): the same pooling with random maps A-bar
   (uniform in [0, 2) in training; ones at test time) gives Y-bar; the attention's effect
   Y_effect = Y - Y-bar is trained with cross-entropy, so the maps must beat random ones.
4. Attention-guided augmentation (WS-DAN): per image, one map crops the image around its
   peak and another erases its peak; both are classified too, plus a centre loss pulls f
   to its class's running centre.
5. Inference: the image and its mirror, each with three crops from the mean attention
   map (thresholds 0.3, 0.2, 0.1), eight views averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glsim.models.gls import crop_and_resize
from glsim.models.output import ModelOutput
from glsim.models.registry import register_model
from glsim.models.resnet import create_resnet101

EPS = 1e-6
# Reference inference crops: (threshold as a fraction of the map's max, padding ratio).
INFERENCE_CROPS = ((0.3, 0.1), (0.2, 0.1), (0.1, 0.05))


@dataclass
class CALOutput:
    logits: Tensor  # (B, K) from the learned attention, Y
    effect: Tensor  # (B, K) Y - Y_bar, the counterfactual effect
    features: Tensor  # (B, M C) pooled attention features f
    attention_maps: Tensor  # (B, M, h, w)


def bilinear_attention_pooling(features: Tensor, attention_maps: Tensor) -> Tensor:
    """WS-DAN's BAP (CAL Eq. 2): (B, C, h, w), (B, M, h, w) -> (B, M C), signed-sqrt, L2."""
    _, _, h, w = features.shape
    pooled = torch.einsum("bmhw,bchw->bmc", attention_maps, features) / (h * w)  # (B, M, C)
    pooled = pooled.flatten(1)  # (B, M C)
    pooled = torch.sign(pooled) * torch.sqrt(pooled.abs() + EPS)
    return F.normalize(pooled, dim=-1)


def attention_boxes(
    maps: Tensor, thresholds: Tensor, padding_ratio: float, size: tuple[int, int]
) -> Tensor:
    """Pixel boxes enclosing where each upsampled map >= threshold x its max, padded.

    Args:
        maps: (B, 1, h, w) one attention map per image.
        thresholds: (B,) fractions of each map's maximum.
        padding_ratio: padding on each side, as a fraction of the image side.
        size: image (H, W).

    Returns:
        int64 (B, 4) boxes ``(x0, y0, x1, y1)``, half-open, inside the image.
    """
    height, width = size
    upsampled = F.interpolate(maps, size=size, mode="bilinear", align_corners=True)[
        :, 0
    ]  # (B, H, W)
    peak = upsampled.flatten(1).amax(-1)  # (B,)
    mask = upsampled >= (thresholds * peak)[:, None, None]  # (B, H, W), never empty

    def span(hit: Tensor, length: int) -> tuple[Tensor, Tensor]:  # hit (B, length)
        index = torch.arange(length, device=hit.device)
        first = torch.where(hit, index, length).amin(-1)  # (B,)
        last = torch.where(hit, index, -1).amax(-1)  # (B,)
        pad = int(padding_ratio * length)
        return (first - pad).clamp(min=0), (last + 1 + pad).clamp(max=length)

    y0, y1 = span(mask.any(dim=2), height)
    x0, x1 = span(mask.any(dim=1), width)
    return torch.stack([x0, y0, x1, y1], dim=-1).long()  # (B, 4)


def attention_drop(images: Tensor, maps: Tensor, thresholds: Tensor) -> Tensor:
    """WS-DAN attention dropping: zero the pixels where the map >= threshold x its max."""
    upsampled = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=True)
    peak = upsampled.flatten(1).amax(-1)  # (B,)
    keep = upsampled < (thresholds * peak)[:, None, None, None]  # (B, 1, H, W)
    return images * keep.to(images.dtype)


class CAL(nn.Module):
    """WS-DAN with counterfactual attention learning on a ResNet-101 (see module docs)."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        num_attentions: int = 32,
        beta: float = 5e-2,
    ) -> None:
        super().__init__()
        self.backbone = backbone  # timm ResNet without pooling/head: (B, C, h, w)
        channels = backbone.num_features
        self.num_attentions = num_attentions
        self.beta = beta
        self.attention = nn.Sequential(
            nn.Conv2d(channels, num_attentions, kernel_size=1, bias=False),
            nn.BatchNorm2d(num_attentions, eps=1e-3),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(num_attentions * channels, num_classes, bias=False)
        self.register_buffer("feature_center", torch.zeros(num_classes, num_attentions * channels))

    def forward_net(self, images: Tensor) -> CALOutput:
        """One pass: attention maps, pooled features, logits and counterfactual effect."""
        features = self.backbone.forward_features(images)  # (B, C, h, w)
        maps = self.attention(features)  # (B, M, h, w)
        pooled = bilinear_attention_pooling(features, maps)  # (B, M C)
        if self.training:
            random_maps = torch.empty_like(maps).uniform_(0, 2)
        else:
            random_maps = torch.ones_like(maps)
        counterfactual = bilinear_attention_pooling(features, random_maps)  # (B, M C)
        logits = self.fc(pooled * 100.0)  # (B, K)
        effect = logits - self.fc(counterfactual * 100.0)  # (B, K)
        return CALOutput(logits, effect, pooled, maps)

    def multi_crop_logits(self, images: Tensor) -> Tensor:
        """CAL inference: image + mirror, each with three attention crops; 8 views averaged."""
        batch, _, height, width = images.shape
        views = torch.cat([images, images.flip(-1)])  # (2B, 3, H, W)
        raw = self.forward_net(views)
        mean_map = raw.attention_maps.mean(dim=1, keepdim=True)  # (2B, 1, h, w)
        fraction = mean_map.new_ones(2 * batch)  # (2B,) one threshold per view
        crops = [
            crop_and_resize(
                views,
                attention_boxes(mean_map, theta * fraction, pad, (height, width)),
                (height, width),
            )
            for theta, pad in INFERENCE_CROPS
        ]
        crop_logits = self.forward_net(torch.cat(crops)).logits  # (3 * 2B, K)
        logits = torch.stack([raw.logits, *crop_logits.chunk(len(INFERENCE_CROPS))])  # (4, 2B, K)
        return logits.mean(0).view(2, batch, -1).mean(0)  # (B, K)

    def forward(self, images: Tensor) -> Tensor:
        """Eval: multi-crop logits (B, K). Training mode: the single-view logits."""
        if self.training:
            return self.forward_net(images).logits
        return self.multi_crop_logits(images)

    def forward_explain(self, images: Tensor, *, top_k: int | None = None) -> ModelOutput:
        """The logits of :meth:`forward` only (``top_k`` is ignored: no patch grid)."""
        return ModelOutput(logits=self(images))

    def sample_attention_maps(self, maps: Tensor) -> Tensor:
        """Per image, two maps drawn with probability ~ sqrt(map mass): (B, 2, h, w)."""
        with torch.no_grad():
            weights = torch.sqrt(maps.sum(dim=(2, 3)) + EPS)  # (B, M)
            index = torch.multinomial(
                weights / weights.sum(-1, keepdim=True), 2, replacement=True
            )  # (B, 2)
        return maps.detach().gather(1, index[..., None, None].expand(-1, -1, *maps.shape[-2:]))

    def training_loss(
        self, images: Tensor, targets: Tensor, criterion: nn.Module
    ) -> tuple[Tensor, Tensor]:
        """CAL's training objective (reference ``train.py``).

        loss = CE(Y) / 3 + CE(Y_effect over raw, crop and drop views) + CE(Y over crop and
        drop views) * 2/3 + centre loss. Returns the mean of the raw and crop logits.
        """
        batch, _, height, width = images.shape
        raw = self.forward_net(images)

        with torch.no_grad():
            center = F.normalize(self.feature_center[targets], dim=-1)  # (B, M C)
            self.feature_center[targets] += self.beta * (raw.features.detach() - center)
            maps = self.sample_attention_maps(raw.attention_maps)  # (B, 2, h, w)
            crop_theta = torch.empty(batch, device=images.device).uniform_(0.4, 0.6)
            drop_theta = torch.empty(batch, device=images.device).uniform_(0.2, 0.5)
            boxes = attention_boxes(maps[:, :1], crop_theta, 0.1, (height, width))
            crops = crop_and_resize(images, boxes, (height, width))
            drops = attention_drop(images, maps[:, 1:], drop_theta)

        augmented = self.forward_net(torch.cat([crops, drops]))  # 2B views
        targets_aug = torch.cat([targets, targets])
        loss = (
            criterion(raw.logits, targets) / 3.0
            + criterion(
                torch.cat([raw.effect, augmented.effect]), torch.cat([targets, targets_aug])
            )
            + criterion(augmented.logits, targets_aug) * 2.0 / 3.0
            + F.mse_loss(raw.features, center, reduction="sum") / batch
        )
        logits = (raw.logits + augmented.logits[:batch]) / 2.0
        return loss, logits


@register_model("cal")
def build_cal(
    *,
    num_classes: int,
    image_size: int,
    weights: str | Path | None = None,
    drop_path_rate: float = 0.0,
    num_attentions: int = 32,
) -> CAL:
    """CAL on ResNet-101 (32 attention maps, as the reference); ``weights`` is an optional
    local ImageNet ResNet-101 file; ``image_size`` is accepted for the common signature."""
    resnet = create_resnet101(
        num_classes=0, weights=weights, drop_path_rate=drop_path_rate, global_pool=""
    )
    return CAL(resnet, num_classes=num_classes, num_attentions=num_attentions)
