#!/usr/bin/env bash
# Create .venv/ and install glsim into it (idempotent: a no-op when nothing changed).
# torch/torchvision come first, pinned to the wheels this machine kind keeps on disk
# (see README); everything else from PyPI, pinned by requirements/constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
STAMP=$VENV/.glsim-setup
WANT=$(cat pyproject.toml requirements/constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"glsim needs Python 3.11, found {sys.version}"'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
"$VENV/bin/pip" install -q -c requirements/constraints.txt -e ".[dev]"
"$VENV/bin/pip" check
echo "$WANT" > "$STAMP"
echo "setup: .venv ready ($("$VENV/bin/python" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__)'))"
