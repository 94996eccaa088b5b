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

from glsim.config import BackboneParams, Params

TINY_VIT = {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}


@pytest.fixture
def tiny_backbone() -> BackboneParams:
    return BackboneParams(name="vit_tiny_patch16_224", overrides=dict(TINY_VIT))


# Tiny models run ~10x faster on one thread than with torch's default on a busy 2-core box.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def tiny_params(tmp_path, **sections) -> Params:
    """Params for a whole pipeline run in ``tmp_path`` in seconds on a CPU."""
    base = {
        "base": {"reports_dir": str(tmp_path / "reports"), "runs_dir": str(tmp_path / "runs"), "device": "cpu"},
        "data": {
            "raw_dir": str(tmp_path / "data/raw"),
            "shards_dir": str(tmp_path / "data/shards"),
            "image_size": 32,
            "synthetic": {
                "num_classes": 3, "train_per_class": 6, "test_per_class": 3,
                "canvas_size": 43, "object_size": [8, 12], "distractors": [1, 2],
            },
        },
        "model": {"backbone": {"name": "vit_tiny_patch16_224", "overrides": dict(TINY_VIT), "weights": None}},
        "pretrain": {
            "num_classes": 4, "images_per_epoch": 32, "epochs": 1, "batch_size": 16,
            "warmup_steps": 1, "test_images": 32, "output": str(tmp_path / "models/backbone.safetensors"),
        },
        "train": {"models": ["vit", "glsim"], "seeds": [1], "epochs": 2, "batch_size": 6, "warmup_steps": 1},
        "eval": {"batch_size": 8},
    }  # fmt: skip
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return Params.model_validate(base)
