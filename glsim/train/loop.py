"""The fine-tuning loop (paper Sec. 4 / App. C): SGD with momentum, per-step cosine schedule
with linear warm-up, label smoothing, gradient clipping, AMP on CUDA, a checkpoint every
epoch and exact resumption.

Determinism: every epoch reseeds python/numpy/torch from ``(seed, epoch)`` and asks the
loader factory for that epoch's stream, so a run resumed from its last checkpoint sees
the same batches, drop-path masks and augmentations as an uninterrupted run and ends with
the same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import Tensor, nn

from glsim.train.checkpoint import (
    CHECKPOINT_NAME,
    TrainState,
    load_checkpoint,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from glsim.utils import seed_everything

LoaderFactory = Callable[[int], Iterable[tuple[Tensor, Tensor]]]
MetricsSink = Callable[[dict[str, float], int], None]


@dataclass
class Recipe:
    """What the loop needs of ``TrainParams`` (kept separate so pretraining can reuse it)."""

    epochs: int
    lr: float
    optimizer: str = "momentum"  # timm name: SGD with momentum (paper); "adamw" for pretraining
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_steps: int = 500
    clip_grad: float | None = 1.0
    label_smoothing: float = 0.0
    amp: bool = True
    log_every: int = 10


class TrainingDiverged(FloatingPointError):
    """The loss became NaN/inf: the message names the epoch, step and LR to lower."""


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def compute_loss(
    model: nn.Module, images: Tensor, targets: Tensor, criterion: nn.Module
) -> tuple[Tensor, Tensor]:
    """A model's own ``training_loss`` when it has one (GLSim, TransFG, CAL), else CE on logits."""
    if hasattr(model, "training_loss"):
        return model.training_loss(images, targets, criterion)
    logits = model(images)
    return criterion(logits, targets), logits


def fit(
    model: nn.Module,
    *,
    loader_for_epoch: LoaderFactory,
    steps_per_epoch: int,
    recipe: Recipe,
    out_dir: str | Path,
    seed: int,
    device: torch.device,
    log_metrics: MetricsSink | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    stop_after_epochs: int | None = None,
    run_key: str = "",
) -> TrainState:
    """Train ``model`` for ``recipe.epochs``, resuming from ``out_dir/last.pt`` if present.

    Args:
        loader_for_epoch: ``epoch -> iterable of (images, labels)``, deterministic per epoch.
        steps_per_epoch: optimiser steps per epoch (for the schedule's length).
        out_dir: where ``last.pt`` lives.
        log_metrics: ``(metrics, step) -> None`` sink (e.g. MLflow).
        on_epoch_end: called with ``(epoch, epoch_metrics)`` after the checkpoint is written.
        stop_after_epochs: stop (as if killed) after this many epochs of *this call*; for
            testing resumption.
        run_key: identifies the configuration (model, recipe, data, seed); a checkpoint
            written under another key is moved aside (``last.pt.stale``) instead of resumed.

    Returns:
        The final :class:`TrainState` (its ``history`` holds per-epoch metrics).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    optimizer = create_optimizer_v2(
        model,
        opt=recipe.optimizer,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        **({"momentum": recipe.momentum} if recipe.optimizer in ("momentum", "sgd") else {}),
    )
    total_steps = max(1, recipe.epochs * steps_per_epoch)
    warmup = min(recipe.warmup_steps, total_steps - 1)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps - warmup),
        warmup_t=warmup,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    use_amp = recipe.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

    state = TrainState()
    ckpt = out_dir / CHECKPOINT_NAME
    if ckpt.exists():
        payload = read_checkpoint(ckpt)  # check whose it is before applying anything
        if payload.get("extra", {}).get("run_key", "") != run_key:
            stale = ckpt.with_suffix(".pt.stale")
            ckpt.replace(stale)
            print(
                f"{ckpt} belongs to another configuration; moved to {stale}, starting afresh",
                flush=True,
            )
        else:
            state, _ = restore_checkpoint(payload, model=model, optimizer=optimizer, scaler=scaler)
            print(
                f"resuming from {ckpt}: epoch {state.epoch}/{recipe.epochs}, step {state.step}",
                flush=True,
            )
        del payload

    epochs_run = 0
    while state.epoch < recipe.epochs:
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
            break
        epoch = state.epoch
        seed_everything(epoch_seed(seed, epoch))
        model.train()
        t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        for images, targets in loader_for_epoch(epoch):
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            scheduler.step_update(state.step)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss, logits = compute_loss(model, images, targets, criterion)
            loss_value = loss.item()  # one host sync per step
            if not math.isfinite(loss_value):
                raise TrainingDiverged(
                    f"loss is {loss_value} at epoch {epoch} step {state.step}; lower train.lr (now {recipe.lr})"
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if recipe.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            state.step += 1
            n = targets.shape[0]
            seen += n
            loss_sum += loss_value * n
            correct += (logits.argmax(-1) == targets).sum().item()
            if log_metrics and state.step % recipe.log_every == 0:
                log_metrics(
                    {"train/loss_step": loss_value, "train/lr": optimizer.param_groups[0]["lr"]},
                    state.step,
                )
        if seen == 0:
            raise RuntimeError(
                f"epoch {epoch}: the training loader yielded no batch; check the shards"
            )
        metrics = {
            "epoch": float(epoch + 1),
            "train/loss": loss_sum / seen,
            "train/acc": 100.0 * correct / seen,
            "train/epoch_seconds": time.perf_counter() - t0,
        }
        state.epoch += 1
        state.history.append(metrics)
        save_checkpoint(
            ckpt,
            model=model,
            optimizer=optimizer,
            scaler=scaler,
            state=state,
            extra={"run_key": run_key},
        )
        epochs_run += 1
        print(
            f"epoch {state.epoch}/{recipe.epochs} loss {metrics['train/loss']:.4f} "
            f"acc {metrics['train/acc']:.2f}% ({metrics['train/epoch_seconds']:.1f}s)",
            flush=True,
        )
        if log_metrics:
            log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, state.step)
        if on_epoch_end:
            on_epoch_end(epoch, metrics)
    return state


def load_trained(model: nn.Module, out_dir: str | Path) -> dict[str, Any]:
    """Load the final weights of a finished run into ``model``; returns the run's state."""
    state, _ = load_checkpoint(Path(out_dir) / CHECKPOINT_NAME, model=model)
    return {"epoch": state.epoch, "step": state.step, "history": state.history}
