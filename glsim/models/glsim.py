"""GLSim (paper Sec. 3, Eq. 1-6): encode, select by global-local similarity, crop, re-encode,
aggregate the two CLS tokens, classify.

    x   = Norm(Encoder([cls; PatchEmbed(I)] + pos))             (B, 1+N, D)   Sec. 3.1
    s   = GLS(x)                                                (B, N)        Eq. 1-2
    I'  = Resize(Crop(I, box(top_O(s))))                        (B, 3, S, S)  Sec. 3.2
    x'  = Norm(Encoder([cls'; PatchEmbed(I')] + pos))           (B, 1+N, D)   shared weights
    z   = Block([x_0; TokenDrop(x'_0)])                         (B, 2, D)     Eq. 3-4
    y   = Linear(Norm(z)_0)                                     (B, C)        Eq. 5-6
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from glsim.models.attention import attention_rollout, cls_attention, forward_blocks_with_attention
from glsim.models.backbone import (
    DEFAULT_BACKBONE,
    DEFAULT_DROP_PATH_RATE,
    block_like,
    create_encoder,
    zeroed,
)
from glsim.models.choices import METRICS, SELECTORS, Metric, Selector
from glsim.models.gls import (
    crop_and_resize,
    crop_boxes,
    enlarge_boxes,
    global_local_similarity,
    place_boxes,
)
from glsim.models.output import ModelOutput
from glsim.models.registry import register_model

# the position controls: the GLS box's size at another place (see ``selector``)
PLACED = {"gls_centred": "centre", "gls_random_place": "random"}


@dataclass(kw_only=True)
class GLSimOutput(ModelOutput):
    """The internals of one GLSim forward pass, for training, visualisation and tests."""

    logits: Tensor  # (B, C) final prediction
    scores: Tensor  # (B, N) selector scores (GLS by default); larger = more discriminative
    boxes: Tensor  # (B, 4) int64 crop boxes (x0, y0, x1, y1) in input pixels
    crops: Tensor  # (B, 3, S, S) resized crops fed to the second pass
    cls_global: Tensor  # (B, D) CLS token of the full image, x_0
    cls_local: Tensor  # (B, D) CLS token of the crop, x'_0
    logits_global: Tensor | None = None  # (B, C) per-view logits when aggregator is off
    logits_local: Tensor | None = None  # (B, C)


class GLSim(nn.Module):
    """GLSim on a timm ViT encoder whose weights are shared by both passes.

    Every knob is given: their defaults are :func:`build_glsim`'s (the params schema's).

    Args:
        encoder: a timm ``VisionTransformer`` with a CLS token (its own head is unused).
        num_classes: classifier width.
        top_k: O, the number of most-similar tokens the crop encloses.
        metric: GLS similarity (``cosine``, ``l1``, ``l2``; Table 14).
        selector: ``gls`` (the paper), ``attention`` (last-layer CLS attention),
            ``rollout`` (attention rollout) or ``random`` (Table 12); or a position control
            of GLS: ``gls_centred`` / ``gls_random_place`` crop a box of the GLS box's size
            (the same zoom per image) at the image centre / at a random place.
        aggregator: with ``False`` (Table 5 ablation) each view has the shared norm/head and
            the more confident view predicts.
        min_box: minimum crop side in pixels (0: none).
        align_corners: the crop's resize convention (:func:`~glsim.models.gls.crop_and_resize`;
            the reference code's ``F.upsample_bilinear`` is ``True``).
        aggregator_drop_path: stochastic depth of the aggregator block (the reference code
            uses the backbone's drop-path rate).
        token_drop: in training, the crop's CLS token is zeroed before the aggregator with
            this probability (the reference's ``Dropout1d`` on the non-first tokens, 0.2;
            kept tokens are scaled by ``1 / (1 - p)``).
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        num_classes: int,
        *,
        top_k: int,
        metric: Metric,
        selector: Selector,
        aggregator: bool,
        min_box: int,
        align_corners: bool,
        aggregator_drop_path: float,
        token_drop: float,
    ) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"unknown similarity metric {metric!r}; use one of {METRICS}")
        if selector not in SELECTORS:
            raise ValueError(f"unknown selector {selector!r}; use one of {SELECTORS}")
        if encoder.cls_token is None or encoder.num_prefix_tokens != 1:
            raise ValueError(
                "GLSim needs a ViT with exactly one prefix token, the CLS token "
                f"(got class_token={encoder.cls_token is not None}, prefix tokens={encoder.num_prefix_tokens})"
            )
        if getattr(encoder, "dynamic_img_size", False):
            raise ValueError(
                "GLSim needs a fixed image size; create the backbone with dynamic_img_size=False"
            )
        self.encoder = encoder
        self.encoder.reset_classifier(0)  # the encoder's own head is unused
        dim = encoder.embed_dim
        self.patch_size: tuple[int, int] = tuple(encoder.patch_embed.patch_size)  # type: ignore[assignment]
        self.grid_size: tuple[int, int] = tuple(encoder.patch_embed.grid_size)  # type: ignore[assignment]
        self.top_k, self.metric, self.selector, self.min_box = top_k, metric, selector, min_box
        self.align_corners = align_corners
        if not 1 <= top_k <= self.grid_size[0] * self.grid_size[1]:
            raise ValueError(
                f"top_k={top_k} must be in [1, {self.grid_size[0] * self.grid_size[1]}] tokens"
            )

        # A separate learnable CLS token for crops, initialised from the backbone's (Sec. 3.2).
        self.crop_cls_token = nn.Parameter(encoder.cls_token.detach().clone())  # (1, 1, D)
        self.aggregator = (
            block_like(
                encoder,
                drop_path=aggregator_drop_path,
                norm_layer=type(encoder.norm)
                if isinstance(encoder.norm, nn.LayerNorm)
                else nn.LayerNorm,
            )
            if aggregator
            else None
        )
        # zeroes whole tokens: (B, T, D) is read as T channels of length D
        self.token_drop = nn.Dropout1d(token_drop) if aggregator and token_drop > 0 else None
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = zeroed(nn.Linear(dim, num_classes))

    # --- Sec. 3.1: the encoder, with a chosen CLS token ----------------------------------
    def encode(self, images: Tensor, cls_token: Tensor, *, return_attention: bool = False):
        """``Norm(Encoder([cls; PatchEmbed(I)] + pos))`` -> (B, 1+N, D) (and attention maps)."""
        enc = self.encoder
        x = enc.patch_embed(images)  # (B, N, D)
        cls = cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        if enc.no_embed_class:  # pos_embed has no CLS slot (DeiT-III style)
            x = torch.cat([cls, x + enc.pos_embed], dim=1)  # (B, 1+N, D)
        else:
            x = torch.cat([cls, x], dim=1) + enc.pos_embed  # (B, 1+N, D)
        x = enc.norm_pre(enc.patch_drop(enc.pos_drop(x)))
        attention = None
        if return_attention:
            x, attention = forward_blocks_with_attention(enc.blocks, x)
        else:
            x = enc.blocks(x)  # (B, 1+N, D)
        x = enc.norm(x)
        return (x, attention) if return_attention else x

    # --- Sec. 3.2: discriminative region selection ---------------------------------------
    @torch.no_grad()
    def select(self, tokens: Tensor, attention: list[Tensor] | None = None) -> Tensor:
        """(B, 1+N, D) -> (B, N) selector scores; larger = keep."""
        if self.selector in ("gls", *PLACED):
            return global_local_similarity(tokens, self.metric)
        if self.selector == "random":
            return torch.rand(tokens.shape[0], tokens.shape[1] - 1, device=tokens.device)
        if attention is None:
            raise ValueError(f"selector {self.selector!r} needs the attention maps")
        if self.selector == "attention":
            return cls_attention(attention[-1])
        if self.selector == "rollout":
            return attention_rollout(attention)
        raise ValueError(f"unknown selector {self.selector!r}; use one of {SELECTORS}")

    @torch.no_grad()
    def crop(self, images: Tensor, scores: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
        """Boxes enclosing the top-O tokens, and the crops resized to the input size."""
        boxes = crop_boxes(
            scores, grid_size=self.grid_size, patch_size=self.patch_size, top_k=top_k
        )  # (B, 4)
        boxes = enlarge_boxes(boxes, min_size=self.min_box, image_size=tuple(images.shape[-2:]))
        if self.selector in PLACED:  # the same box size (zoom), another place
            boxes = place_boxes(
                boxes, image_size=tuple(images.shape[-2:]), where=PLACED[self.selector]
            )
        crops = crop_and_resize(
            images, boxes, tuple(images.shape[-2:]), align_corners=self.align_corners
        )  # (B, 3, S, S)
        return boxes, crops

    # --- Eq. 3-6: aggregate and classify -------------------------------------------------
    def forward_head(
        self, cls_global: Tensor, cls_local: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Both CLS tokens (B, D) -> ``(logits, logits_global, logits_local)``, each (B, C).

        With the aggregator: one block over the pair, norm, head on the first token (the
        per-view logits are ``None``). Without: each view through the shared norm and head,
        and the more confident view predicts.
        """
        if self.aggregator is not None:
            if self.token_drop is not None:  # training only (Dropout1d is the identity in eval)
                cls_local = self.token_drop(cls_local[:, None])[:, 0]  # (B, D)
            z = self.aggregator(torch.stack([cls_global, cls_local], dim=1))  # (B, 2, D)
            return self.head(self.norm(z)[:, 0]), None, None  # (B, C)
        logits_global = self.head(self.norm(cls_global))  # (B, C)
        logits_local = self.head(self.norm(cls_local))  # (B, C)
        conf_g = logits_global.softmax(-1).amax(-1)  # (B,)
        conf_l = logits_local.softmax(-1).amax(-1)  # (B,)
        logits = torch.where((conf_g >= conf_l)[:, None], logits_global, logits_local)
        return logits, logits_global, logits_local

    # --- the whole model -----------------------------------------------------------------
    def forward_explain(self, images: Tensor, *, top_k: int | None = None) -> GLSimOutput:
        """Forward pass returning every internal (scores, boxes, crops, CLS tokens, logits).

        ``top_k``: O for this pass (``None``: the configured ``self.top_k``).
        """
        if self.selector in ("attention", "rollout"):
            tokens, attention = self.encode(images, self.encoder.cls_token, return_attention=True)
        else:
            tokens, attention = self.encode(images, self.encoder.cls_token), None  # (B, 1+N, D)
        scores = self.select(tokens, attention)  # (B, N)
        boxes, crops = self.crop(images, scores, self.top_k if top_k is None else top_k)
        crop_tokens = self.encode(crops, self.crop_cls_token)  # (B, 1+N, D)
        cls_global, cls_local = tokens[:, 0], crop_tokens[:, 0]  # (B, D) each
        logits, logits_global, logits_local = self.forward_head(cls_global, cls_local)
        return GLSimOutput(
            logits=logits,
            scores=scores,
            boxes=boxes,
            crops=crops,
            cls_global=cls_global,
            cls_local=cls_local,
            logits_global=logits_global,
            logits_local=logits_local,
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_explain(images).logits

    def training_loss(
        self, images: Tensor, targets: Tensor, criterion: nn.Module
    ) -> tuple[Tensor, Tensor]:
        """Eq. 6: cross-entropy on the prediction; without the aggregator, on both views."""
        out = self.forward_explain(images)
        if self.aggregator is None:
            loss = criterion(out.logits_global, targets) + criterion(out.logits_local, targets)
        else:
            loss = criterion(out.logits, targets)
        return loss, out.logits

    def no_weight_decay(self) -> set[str]:
        return {"crop_cls_token"} | {f"encoder.{k}" for k in self.encoder.no_weight_decay()}


@register_model("glsim")
def build_glsim(
    *,
    num_classes: int,
    image_size: int,
    backbone: str = DEFAULT_BACKBONE,
    backbone_overrides: dict[str, Any] | None = None,
    weights: str | Path | None = None,
    drop_path_rate: float = DEFAULT_DROP_PATH_RATE,
    top_k: int = 8,
    metric: Metric = "cosine",
    selector: Selector = "gls",
    aggregator: bool = True,
    min_box: int = 0,
    align_corners: bool = True,
    aggregator_drop_path: bool = True,
    token_drop: float = 0.2,
) -> GLSim:
    """GLSim on the timm ViT ``backbone`` (``backbone_overrides``: its constructor arguments)
    with an optional local ``weights`` file. ``aggregator_drop_path``: the aggregator gets
    stochastic depth at ``drop_path_rate``, as the reference code does.

    The defaults are the params schema's (``model.glsim``, the reference code's behaviour),
    so this builds the model the pipeline trains; the other arguments are :class:`GLSim`'s.
    """
    encoder = create_encoder(
        backbone,
        backbone_overrides,
        image_size=image_size,
        weights=weights,
        drop_path_rate=drop_path_rate,
    )
    return GLSim(
        encoder,
        num_classes,
        top_k=top_k,
        metric=metric,
        selector=selector,
        aggregator=aggregator,
        min_box=min_box,
        align_corners=align_corners,
        aggregator_drop_path=drop_path_rate if aggregator_drop_path else 0.0,
        token_drop=token_drop,
    )
