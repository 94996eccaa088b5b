"""Run by ``torchrun --nproc_per_node 2`` from test_distributed.py: one optimisation step of
a tiny model in DistributedDataParallel, each rank on its half of a fixed batch, through the
training loop's own ``distribute`` and ``train_step``; rank 0 saves the weights after it."""

from __future__ import annotations

import sys

import torch
from torch import nn

from glsim.models import create_model
from glsim.train.distributed import setup, teardown
from glsim.train.loop import Recipe, build_optimizer, distribute, train_step

TINY_VIT = {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
BATCH, CLASSES, SIZE = 8, 5, 32


def tiny(name: str) -> nn.Module:
    """Without randomness in training (drop-path, GLSim's token drop): both sides step alike."""
    torch.manual_seed(0)
    no_token_drop = {"token_drop": 0.0} if name == "glsim" else {}
    return create_model(
        name, num_classes=CLASSES, image_size=SIZE, backbone="vit_tiny_patch16_224",
        backbone_overrides=TINY_VIT, weights=None, drop_path_rate=0.0, **no_token_drop,
    )  # fmt: skip


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.arange(BATCH) % CLASSES


def step(model: nn.Module, net: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> None:
    optimizer = build_optimizer(model, Recipe(epochs=1, lr=0.1, weight_decay=1e-4))
    train_step(
        net, images, targets, optimizer=optimizer, criterion=nn.CrossEntropyLoss(label_smoothing=0.1),
        scaler=None, clip_grad=1.0, use_amp=False, device_type="cpu",
    )  # fmt: skip


def main(name: str, out: str) -> None:
    dist, device = setup(torch.device("cpu"))
    model = tiny(name)
    images, targets = batch()
    half = BATCH // dist.world_size
    mine = slice(dist.rank * half, (dist.rank + 1) * half)
    net = distribute(model, nn.CrossEntropyLoss(label_smoothing=0.1), dist, device)
    step(model, net, images[mine], targets[mine])
    if dist.is_main:
        torch.save(model.state_dict(), out)
    dist.barrier()
    teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
