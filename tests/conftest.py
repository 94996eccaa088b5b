"""Tiny fixtures: a ViT of depth 2 / width 64 at 32x32, a few-image dataset in tmp_path,
params overridden for CPU. Nothing here downloads."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import pytest
import torch
from tiny import TINY_VIT


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
