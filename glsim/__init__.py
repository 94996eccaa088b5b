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

# A thread count that neither MKL nor OpenMP lowers on its own (the count is
# ``base.num_threads``; README "Reproducibility"), read when torch loads them, so only where
# glsim is imported before torch (every stage script is). Measured bit-neutral at 1 and 2
# threads. MKL_CBWR is left alone: at a fixed count MKL already repeats itself bit for bit
# here, and MKL_CBWR=AUTO changes the 2-thread results. A user's own value wins.
for _key, _value in {"MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE"}.items():
    _os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
