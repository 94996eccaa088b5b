"""Tiny fixtures: a ViT of depth 2 / width 64 at 32x32, a few-image dataset in tmp_path,
params overridden for CPU. Nothing here downloads."""

from __future__ import annotations

import os

from envfile import telemetry_switches

# the telemetry switches of scripts/telemetry.env, before any dependency is imported; the
# subprocesses tests start inherit them
for _key, _value in telemetry_switches().items():
    os.environ.setdefault(_key, _value)

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny import TINY_VIT  # noqa: E402


@pytest.fixture
def tiny_backbone() -> dict:
    """The tiny ViT as ``create_model`` keyword arguments."""
    return {"backbone": "vit_tiny_patch16_224", "backbone_overrides": dict(TINY_VIT)}


# Tiny models run ~10x faster on one thread than with torch's default on a busy 2-core box.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
