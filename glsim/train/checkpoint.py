"""Checkpoints: written atomically every epoch, read back to resume a killed run; the
digest of a run's final weights and what those bits depend on (:func:`result_record`)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glsim.utils import atomic_torch_save

CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainState:
    """Where a run is: the next epoch to run, optimiser steps done, per-epoch history."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: TrainState,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write model, optimiser, grad-scaler and loop state in one atomic file."""
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "state": asdict(state),
        "extra": extra or {},
    }
    return atomic_torch_save(payload, path)


def require_checkpoint(path: str | Path) -> Path:
    """``path`` if the checkpoint exists, else a :class:`~glsim.errors.RunError` saying to train."""
    path = Path(path)
    if not path.is_file():
        from glsim.errors import RunError

        raise RunError(
            f"no checkpoint at {path}: this run has not been trained yet; run its train stage "
            "first (dvc repro, or pipelines/train.py with the same --dataset/--model/--seed)"
        )
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw payload :func:`save_checkpoint` wrote (nothing is applied yet)."""
    path = require_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a torn or foreign file
        from glsim.errors import RunError

        raise RunError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); delete it to restart the run"
        ) from None


def restore_checkpoint(
    payload: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Apply a payload to model/optimiser/scaler; returns the loop state and ``extra``."""
    model.load_state_dict(payload["model"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    return TrainState(**payload["state"]), payload.get("extra", {})


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Restore what :func:`save_checkpoint` wrote; returns the loop state and ``extra``."""
    return restore_checkpoint(
        read_checkpoint(path), model=model, optimizer=optimizer, scaler=scaler
    )


def weights_digest(state_dict: dict[str, Any]) -> str:
    """sha256 over every tensor of a state dict: its name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def result_record(state_dict: dict[str, Any]) -> dict[str, Any]:
    """What a finished run produced and what its bits depend on besides its run key: the
    numerics profile this process ran under, the host (:func:`glsim.numerics.host_record`)
    and the :func:`weights_digest` of the weights it wrote. None of it is in the run key:
    the same key on another host or profile is the same experiment, not the same bits."""
    from glsim.numerics import active_profile, host_record

    return {
        "numerics": active_profile(),
        "host": host_record(),
        "weights_sha256": weights_digest(state_dict),
    }
