"""Models: the GLSim model, the baselines it is compared with, and their building blocks.

Importing this package registers every model with :func:`create_model`.
"""

from glsim.models import cal as _cal  # noqa: F401,E402  (registers "cal")
from glsim.models import ffvt as _ffvt  # noqa: F401,E402  (registers "ffvt")
from glsim.models import glsim as _glsim  # noqa: F401,E402  (registers "glsim")
from glsim.models import resnet as _resnet  # noqa: F401,E402  (registers "resnet101")
from glsim.models import transfg as _transfg  # noqa: F401,E402  (registers "transfg")
from glsim.models import vit as _vit  # noqa: F401,E402  (registers "vit")
from glsim.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
