"""glsim: Global-Local Similarity for fine-grained recognition with vision transformers."""

import os as _os

# Several dependencies phone home at import or start-up; nothing here may depend on it.
for _key, _value in {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
}.items():
    _os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
