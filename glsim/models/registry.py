"""``@register_model`` / ``create_model``: the one factory every stage and test uses (as timm's).

A builder is ``fn(*, num_classes, image_size, <plain keyword arguments>) -> nn.Module``; the
model it returns has ``forward_explain(images, *, top_k=None) -> ModelOutput``. The built-in
models register themselves when their module is imported, which happens on the first
lookup here (so importing this module alone loads no model code).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

Builder = Callable[..., "nn.Module"]

_MODELS: dict[str, Builder] = {}
_BUILTIN_MODULES = ("vit", "glsim", "transfg", "ffvt", "resnet", "cal")
_REQUIRED = ("num_classes", "image_size")
_builtins_loaded = False


class UnknownModel(KeyError):
    """No model is registered under this name (the message suggests the closest)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def load_builtin_models() -> None:
    """Import the built-in model modules, which registers them (once)."""
    global _builtins_loaded
    if not _builtins_loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(f"glsim.models.{module}")
        _builtins_loaded = True


def check_model_name(name: str) -> str:
    """``name`` if registered, else :class:`UnknownModel` naming the closest registered one."""
    load_builtin_models()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownModel(f"unknown model {name!r}{hint} (registered: {', '.join(list_models())})")
    return name


def _options(fn: Builder) -> list[str]:
    """The builder's keyword arguments other than ``num_classes`` / ``image_size``, sorted."""
    params = inspect.signature(fn).parameters.values()
    return sorted(
        p.name
        for p in params
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in _REQUIRED
    )


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register a builder ``fn(*, num_classes, image_size, **plain_kwargs) -> nn.Module``.

    The builder names every argument it takes (no ``**kwargs``), so :func:`create_model`
    can refuse the ones it does not.
    """

    def wrap(fn: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        params = inspect.signature(fn).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise TypeError(
                f"model {name!r}: the builder must name its arguments, not take **kwargs"
            )
        missing = [r for r in _REQUIRED if r not in params]
        if missing:
            raise TypeError(f"model {name!r}: the builder must take {', '.join(missing)}")
        _MODELS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    load_builtin_models()
    return sorted(_MODELS)


def model_options(name: str) -> list[str]:
    """The keyword arguments model ``name``'s builder takes (``backbone``: a ViT model)."""
    return _options(_MODELS[check_model_name(name)])


def create_model(name: str, *, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a registered name (``list_models()``), e.g. ``"glsim"`` or ``"vit"``.
        num_classes: classifier width.
        image_size: square input side S in pixels.
        **kwargs: the builder's own keyword arguments (e.g. ``backbone="vit_base_patch16_224"``,
            ``top_k=8``, ``drop_path_rate=0.1``).

    Raises:
        UnknownModel: ``name`` is not registered.
        TypeError: naming every argument the builder does not take, and the ones it does.
    """
    builder = _MODELS[check_model_name(name)]
    valid = _options(builder)
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise TypeError(
            f"model {name!r} takes no argument(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(valid)}"
        )
    model = builder(num_classes=num_classes, image_size=image_size, **kwargs)
    if not callable(getattr(model, "forward_explain", None)):
        raise TypeError(
            f"model {name!r} builds a {type(model).__name__} without forward_explain(images, *, top_k)"
        )
    return model
