"""Models: the GLSim model, the baselines it is compared with, and their building blocks.

This layer imports only torch, timm and the standard library, never the rest of glsim.
Importing the package is cheap (no torch): the registry and every model module load on the
first use of :func:`create_model`, :func:`list_models`, :func:`register_model`,
:func:`check_model_name` or :class:`UnknownModel` (PEP 562), so ``glsim.models.choices``
can be imported by the params schema alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glsim.models.registry import (
        UnknownModel,
        check_model_name,
        create_model,
        list_models,
        register_model,
    )

__all__ = ["UnknownModel", "check_model_name", "create_model", "list_models", "register_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from glsim.models import registry

        registry.load_builtin_models()
        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
