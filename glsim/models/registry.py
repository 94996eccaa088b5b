"""``@register_model`` / ``create_model``: the one factory every stage and test uses (as timm's)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


class UnknownModel(KeyError):
    """No model is registered under this name (the message suggests the closest)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def check_model_name(name: str) -> str:
    """``name`` if registered, else :class:`UnknownModel` naming the closest registered one."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownModel(
            f"unknown model {name!r}{hint} (registered: {', '.join(list_models())})"
        )
    return name


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder ``fn(*, num_classes, image_size, backbone, **overrides) -> nn.Module``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, *, num_classes: int, image_size: int, **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a registered name (``list_models()``), e.g. ``"glsim"`` or ``"vit"``.
        num_classes: classifier width.
        image_size: square input side S in pixels.
        **overrides: passed to the builder (e.g. ``backbone=BackboneParams(...)``,
            ``glsim=GLSimParams(...)``, ``drop_path_rate=0.1``).
    """
    return _MODELS[check_model_name(name)](num_classes=num_classes, image_size=image_size, **overrides)
