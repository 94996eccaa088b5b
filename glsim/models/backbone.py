"""The ViT backbone: any timm ``VisionTransformer`` by name, with weights from a local file.

Nothing here downloads: ``pretrained=True`` would need the hub, so weights come from a
file named in params (``.safetensors``, ``.pth``/``.pt``/``.bin`` or big_vision ``.npz``)
and are adapted to the model with timm's own ``checkpoint_filter_fn`` (position embedding
and patch embedding resampling), as timm's ``pretrained_cfg_overlay=dict(file=...)`` does.

The ViT models' builders share :func:`create_encoder` (their ViT, from their common
arguments and defaults), :func:`block_like` (an extra block shaped as the encoder's) and
:func:`zeroed` (the zero-initialised head).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn
from torch import nn

# The builders' defaults are the params schema's (``model.backbone.name``, and the drop-path
# rate the fine-tuning recipe gives every ViT model: ``train.drop_path`` at augreg "strong"),
# so that ``create_model(name)`` builds the model the pipeline trains; the models layer
# cannot import the schema, so tests/models/test_defaults.py checks the two agree.
DEFAULT_BACKBONE = "vit_base_patch16_224"
DEFAULT_DROP_PATH_RATE = 0.1
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
MAX_KEYS_IN_MESSAGE = 8


class WeightsError(ValueError):
    """A weights file is missing, unreadable or does not fit the model."""


def create_vit(
    name: str,
    *,
    image_size: int,
    num_classes: int = 0,
    weights: str | Path | None = None,
    **overrides: Any,
) -> VisionTransformer:
    """Create a timm ViT by name at ``image_size`` and load a local weights file.

    Args:
        name: a timm model name whose class is ``VisionTransformer`` (e.g.
            ``vit_base_patch16_224``); ``overrides`` may change any constructor argument
            (``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``drop_path_rate``...).
        image_size: square input side in pixels.
        num_classes: head width (0: no head, features only).
        weights: optional local weights file; the classifier head is never loaded.
    """
    try:
        model = timm.create_model(
            name, pretrained=False, img_size=image_size, num_classes=num_classes, **overrides
        )
    except RuntimeError as err:  # timm's "Unknown model"
        raise ValueError(f"model.backbone.name: {err}; see timm.list_models('vit_*')") from None
    except TypeError as err:  # a non-ViT class refuses img_size, or an override is not an argument
        raise ValueError(
            f"model.backbone.name {name!r} with overrides {overrides}: timm cannot build it ({err}); "
            "GLSim needs a timm VisionTransformer (e.g. vit_base_patch16_224) and "
            "model.backbone.overrides must be its constructor arguments"
        ) from None
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"model.backbone.name {name!r} builds a {type(model).__name__}, not a timm "
            "VisionTransformer; GLSim needs a ViT with a CLS token (e.g. vit_base_patch16_224)"
        )
    if weights is not None:
        load_vit_weights(model, weights)
    return model


def create_encoder(
    backbone: str,
    backbone_overrides: dict[str, Any] | None,
    *,
    image_size: int,
    weights: str | Path | None,
    drop_path_rate: float,
    num_classes: int = 0,
) -> VisionTransformer:
    """The ViT a model builder wraps: :func:`create_vit` from the builder's common arguments
    (``backbone_overrides``: the timm constructor arguments, ``None`` for none)."""
    return create_vit(
        backbone,
        image_size=image_size,
        num_classes=num_classes,
        weights=weights,
        drop_path_rate=drop_path_rate,
        **(backbone_overrides or {}),
    )


def block_like(encoder: VisionTransformer, **kwargs: Any) -> Block:
    """A new transformer block with ``encoder``'s width, heads, MLP ratio and QKV bias
    (``kwargs``: further :class:`~timm.models.vision_transformer.Block` arguments)."""
    dim, block0 = encoder.embed_dim, encoder.blocks[0]
    return Block(
        dim,
        num_heads=block0.attn.num_heads,
        mlp_ratio=block0.mlp.fc1.out_features / dim,
        qkv_bias=block0.attn.qkv.bias is not None,
        **kwargs,
    )


def zeroed(head: nn.Linear) -> nn.Linear:
    """``head`` with zero weight and bias, in place: every model starts its classifier at zero
    (the GLSim and TransFG reference code), so all share one recipe."""
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or torch checkpoint into a flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}; set model.backbone.weights to a local file "
            f"({', '.join(WEIGHT_SUFFIXES)}) or run the `pretrain` stage that writes it"
        )
    if path.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(
            f"{path}: unsupported weights format {path.suffix!r}; use one of {WEIGHT_SUFFIXES}"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means an unreadable file
        raise WeightsError(
            f"{path}: could not read weights ({type(err).__name__}: {err})"
        ) from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: is not a state dict of tensors")
    return state


def _listed(what: str, keys: list[str], limit: int = MAX_KEYS_IN_MESSAGE) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{what}: {keys[:limit]}{more}"


def load_vit_weights(model: VisionTransformer, path: str | Path) -> None:
    """Load a local file into ``model``, skipping the classifier head.

    Raises:
        WeightsError: naming the path and every missing, unexpected or mis-shaped key.
    """
    path = Path(path)
    if path.suffix == ".npz":
        if not path.is_file():
            read_state_dict(path)  # raises the not-found error
        try:
            model.load_pretrained(str(path))  # timm's big_vision/JAX reader
        except Exception as err:  # noqa: BLE001
            raise WeightsError(f"{path}: does not fit {type(model).__name__}: {err}") from None
        return
    fix = (
        "check model.backbone.name and model.backbone.overrides match the architecture the "
        "file was saved from"
    )
    try:
        state = checkpoint_filter_fn(read_state_dict(path), model)  # resamples pos/patch embeds
    except WeightsError:
        raise
    except Exception as err:  # noqa: BLE001 - timm's resampling fails on a foreign layout
        raise WeightsError(
            f"{path}: does not fit the backbone ({type(err).__name__}: {err}); {fix}"
        ) from None
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # task-specific
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = sorted(k for k in own if k not in state and not k.startswith("head."))
    unexpected = sorted(k for k in state if k not in own)
    problems = [
        _listed(what, keys)
        for what, keys in (
            ("shape mismatch", mismatched),
            ("missing keys", missing),
            ("unexpected keys", unexpected),
        )
        if keys
    ]
    if problems:
        raise WeightsError(f"{path}: does not fit the backbone ({'; '.join(problems)}); {fix}")
    model.load_state_dict(state, strict=False)


def pretrained_norm(model: VisionTransformer) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation (mean, std) from the backbone's pretrained config (ImageNet by default)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    return mean, std
