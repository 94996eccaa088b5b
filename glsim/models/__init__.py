"""Models: the GLSim model, the baselines it is compared with, and their building blocks.

Importing this package registers every model with :func:`create_model`.
"""

from glsim.models.registry import create_model, list_models, register_model

from glsim.models import vit as _vit  # noqa: F401,E402  (registers "vit")
from glsim.models import glsim as _glsim  # noqa: F401,E402  (registers "glsim")

__all__ = ["create_model", "list_models", "register_model"]
