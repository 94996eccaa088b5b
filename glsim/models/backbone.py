"""The ViT backbone: any timm ``VisionTransformer`` by name, with weights from a local file.

Nothing here downloads: ``pretrained=True`` would need the hub, so weights come from a
file named in params (``.safetensors``, ``.pth``/``.pt``/``.bin`` or big_vision ``.npz``)
and are adapted to the model with timm's own ``checkpoint_filter_fn`` (position embedding
and patch embedding resampling), as timm's ``pretrained_cfg_overlay=dict(file=...)`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")


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
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"model.backbone.name {name!r} builds a {type(model).__name__}, not a timm "
            "VisionTransformer; GLSim needs a ViT with a CLS token (e.g. vit_base_patch16_224)"
        )
    if weights is not None:
        load_vit_weights(model, weights)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or torch checkpoint into a flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}; set model.backbone.weights to a local file "
            f"({', '.join(WEIGHT_SUFFIXES)}) or run the `pretrain` stage that writes it"
        )
    if path.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(f"{path}: unsupported weights format {path.suffix!r}; use one of {WEIGHT_SUFFIXES}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means an unreadable file
        raise WeightsError(f"{path}: could not read weights ({type(err).__name__}: {err})") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: is not a state dict of tensors")
    return state


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
    state = checkpoint_filter_fn(read_state_dict(path), model)  # resamples pos/patch embeds
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # task-specific
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = sorted(k for k in own if k not in state and not k.startswith("head."))
    unexpected = sorted(k for k in state if k not in own)
    if mismatched or missing or unexpected:
        parts = []
        if mismatched:
            parts.append(f"shape mismatch: {mismatched[:8]}")
        if missing:
            parts.append(f"missing keys: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise WeightsError(
            f"{path}: does not fit the backbone ({'; '.join(parts)}); check model.backbone.name "
            "and model.backbone.overrides match the architecture the file was saved from"
        )
    model.load_state_dict(state, strict=False)


def save_vit_weights(model: VisionTransformer, path: str | Path) -> Path:
    """Save the backbone (without its head) as ``.safetensors``, atomically."""
    from safetensors.torch import save_file

    from glsim.utils import _atomic

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    return _atomic(path, lambda p: save_file(state, str(p)))


def pretrained_norm(model: VisionTransformer) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation (mean, std) from the backbone's pretrained config (ImageNet by default)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
