"""The fine-tuning loop (paper Sec. 4 / App. C): SGD with momentum, per-step cosine schedule
with linear warm-up, label smoothing, gradient clipping, AMP on CUDA, a checkpoint every
epoch and exact resumption.

Determinism: every epoch reseeds python/numpy/torch from ``(seed, epoch)`` and asks the
loader factory for that epoch's stream, so a run resumed from its last checkpoint sees
the same batches, drop-path masks and augmentations as an uninterrupted run and ends with
the same weights.

Under ``torchrun`` (:mod:`glsim.train.distributed`) the same loop runs in every rank with
the model in DistributedDataParallel: gradients are averaged over the ranks, so N ranks on
``B/N`` images each take the step one process takes on ``B``; the metrics read every
``log_every`` steps are summed over the ranks (the divergence check sees the same value in
every rank), and only rank 0 logs, prints and writes the checkpoint.
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
from torch.nn.parallel import DistributedDataParallel

from glsim.progress import progress, set_postfix
from glsim.train.checkpoint import (
    CHECKPOINT_NAME,
    TrainState,
    load_checkpoint,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from glsim.train.distributed import SINGLE, Dist
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
    amp: bool = True  # CUDA: float16 autocast + GradScaler
    cpu_amp: bool = False  # CPU: bfloat16 autocast (no scaler: bf16 has float32's range)
    log_every: int = 10

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype of a training forward pass on ``device`` (None: float32)."""
        if device.type == "cuda" and self.amp:
            return torch.float16
        if device.type == "cpu" and self.cpu_amp:
            return torch.bfloat16
        return None


class TrainingDiverged(FloatingPointError):
    """The loss became NaN/inf: the message names the epoch, step and LR to lower."""


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


RANK_SEED_STRIDE = 1_000_000_007  # torchrun rank r seeds epoch_seed + r * stride


def compute_loss(
    model: nn.Module, images: Tensor, targets: Tensor, criterion: nn.Module
) -> tuple[Tensor, Tensor]:
    """A model's own ``training_loss`` when it has one (GLSim, TransFG, CAL), else CE on logits."""
    if hasattr(model, "training_loss"):
        return model.training_loss(images, targets, criterion)
    logits = model(images)
    return criterion(logits, targets), logits


class LossForward(nn.Module):
    """``model`` and its loss as one module, ``(images, targets) -> (loss, logits)``, so
    that DistributedDataParallel, which syncs gradients of what its ``forward`` computes,
    also covers the models whose loss is their own ``training_loss`` (GLSim, TransFG, CAL)."""

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return compute_loss(self.model, images, targets, self.criterion)


def distribute(
    model: nn.Module,
    criterion: nn.Module,
    dist: Dist,
    device: torch.device,
    *,
    compile_step: bool = False,
) -> nn.Module:
    """The module a rank steps: ``model`` itself when alone, else its :class:`LossForward`
    in DistributedDataParallel (which broadcasts rank 0's weights to every rank). BatchNorm
    (ResNet, CAL) becomes SyncBatchNorm on CUDA; gloo on CPU keeps per-rank statistics.

    ``compile_step``: the forward and loss through ``torch.compile`` (a :class:`LossForward`,
    so a model's own ``training_loss`` is compiled too). The parameters stay ``model``'s:
    checkpoints, resumption and the weights are those of the eager model.
    """
    if not dist.enabled and not compile_step:
        return model
    net: nn.Module = LossForward(model, criterion)
    if dist.enabled:
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    return torch.compile(net) if compile_step else net


def _forward(
    net: nn.Module, images: Tensor, targets: Tensor, criterion: nn.Module
) -> tuple[Tensor, Tensor]:
    if net is not _unwrap(net):  # a (DDP- or compile-wrapped) LossForward: call it whole
        return net(images, targets)
    return compute_loss(net, images, targets, criterion)


def _unwrap(net: nn.Module) -> nn.Module:
    """The model inside :func:`distribute`'s wrapping (compile, DDP, LossForward)."""
    net = getattr(net, "_orig_mod", net)  # torch.compile's OptimizedModule
    if isinstance(net, DistributedDataParallel):
        net = net.module
    return net.model if isinstance(net, LossForward) else net


def after_optimizer_step(net: nn.Module) -> None:
    """A model's own ``after_optimizer_step`` when it has one (self-distillation's EMA
    teacher update), also under :func:`distribute`'s wrapping."""
    hook = getattr(_unwrap(net), "after_optimizer_step", None)
    if hook is not None:
        hook()


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """timm's optimiser named by ``recipe.optimizer`` (momentum only for the SGD family)."""
    return create_optimizer_v2(
        model,
        opt=recipe.optimizer,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        **({"momentum": recipe.momentum} if recipe.optimizer in ("momentum", "sgd") else {}),
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> CosineLRScheduler:
    """Per-step cosine schedule over the whole run after a linear warm-up from 0."""
    total_steps = max(1, recipe.epochs * steps_per_epoch)
    warmup = min(recipe.warmup_steps, total_steps - 1)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps - warmup),
        warmup_t=warmup,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def resume_or_start(
    ckpt_path: str | Path,
    run_key: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    world_size: int = 1,
) -> TrainState:
    """The state to continue from: ``ckpt_path``'s when it was written under ``run_key``
    (model, optimiser and scaler are restored from it).

    A checkpoint of another configuration is moved aside to ``last.pt.stale`` (nothing of it
    is applied) and a fresh :class:`TrainState` is returned; so is one when there is none.
    The torchrun world size is not in the run key (a finished run is one for any N), but
    each rank's share of a batch is: a run is resumed only with the world size it started
    with (:class:`~glsim.errors.RunError` otherwise).
    """
    ckpt = Path(ckpt_path)
    if not ckpt.exists():
        return TrainState()
    payload = read_checkpoint(ckpt)  # check whose it is before applying anything
    if payload.get("extra", {}).get("run_key", "") != run_key:
        stale = ckpt.with_suffix(".pt.stale")
        ckpt.replace(stale)
        print(
            f"{ckpt} belongs to another configuration; moved to {stale}, starting afresh",
            flush=True,
        )
        return TrainState()
    started = int(payload.get("extra", {}).get("world_size", 1))
    if started != world_size:
        from glsim.errors import RunError

        raise RunError(
            f"{ckpt}: this run was started with {started} process(es) and is resumed with "
            f"{world_size}; resume it with torchrun --nproc_per_node {started}"
            + (" (or without torchrun)" if started == 1 else "")
            + f", or delete {ckpt} to start it afresh"
        )
    state, _ = restore_checkpoint(payload, model=model, optimizer=optimizer, scaler=scaler)
    return state


def train_step(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    scaler: torch.amp.GradScaler | None,
    clip_grad: float | None,
    use_amp: bool,
    device_type: str,
    amp_dtype: torch.dtype = torch.float16,
) -> tuple[Tensor, Tensor]:
    """One optimiser step: forward (``amp_dtype`` autocast when ``use_amp``: float16 on
    CUDA, bfloat16 on CPU), backward, clip, step.

    ``model`` is a model, or what :func:`distribute` made of it under torchrun (then the
    backward pass also averages the gradients over the ranks). Returns ``(loss, correct)`` as tensors on the model's device -- the detached loss and
    the number of correctly classified images in the batch -- and never syncs with the
    host, so the caller decides when to read them (and to check the loss is finite).
    ``scaler`` (a CUDA ``GradScaler``) is used when given.
    """
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device_type, dtype=amp_dtype, enabled=use_amp):
        loss, logits = _forward(model, images, targets, criterion)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    after_optimizer_step(model)
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets).sum()
    return loss.detach(), correct


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    epoch: int,
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    scheduler: CosineLRScheduler,
    criterion: nn.Module,
    scaler: torch.amp.GradScaler | None,
    recipe: Recipe,
    device: torch.device,
    log_metrics: MetricsSink | None = None,
    dist: Dist = SINGLE,
    total_steps: int | None = None,
) -> dict[str, float]:
    """Run one pass over ``loader``, advancing ``state.step``; the epoch's mean loss and accuracy.

    Under torchrun (``dist``) each rank passes over its own loader (the loaders must yield
    the same number of batches), and what is read is summed over the ranks: the loss logged
    is the ranks' mean, the epoch's loss and accuracy are over every rank's images.

    The loss sum and correct count stay on the device and are read (one host sync) every
    ``recipe.log_every`` steps -- when ``train/loss_step`` and ``train/lr`` are logged -- and
    at the end of the epoch. The loss is checked at those reads: a NaN/inf loss raises
    :class:`TrainingDiverged` naming the epoch, the (0-based) step of the read where it was
    detected -- it became non-finite at most ``log_every - 1`` steps earlier -- and the LR.

    On a terminal (:mod:`glsim.progress`) rank 0 shows a bar over the epoch's
    ``total_steps`` steps, its loss updated at those reads only: the bar adds no host sync.

    Returns ``{"train/loss", "train/acc", "train/epoch_seconds"}``.
    """
    model.train()
    log_every = max(1, recipe.log_every)
    amp_dtype = recipe.autocast_dtype(device)
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
    loss_sum = torch.zeros((), dtype=acc_dtype, device=device)
    correct_sum = torch.zeros((), dtype=acc_dtype, device=device)
    t0, seen, checked_through = time.perf_counter(), 0, state.step

    def read(loss: Tensor) -> tuple[float, float, float]:
        """The only host sync: last step's loss, the epoch's loss sum and correct count."""
        stacked = torch.stack((loss.to(acc_dtype), loss_sum, correct_sum))
        if dist.enabled:
            dist.all_reduce_sum(stacked)
            stacked[0] /= dist.world_size
        values = stacked.tolist()
        nonlocal checked_through
        step = state.step - 1  # 0-based index of the step just taken
        bad = next((v for v in values[:2] if not math.isfinite(v)), None)
        if bad is not None:
            since = f" (became non-finite in steps {checked_through}-{step})"
            raise TrainingDiverged(
                f"loss is {bad} at epoch {epoch} step {step}"
                f"{since if checked_through < step else ''}; lower train.lr (now {recipe.lr})"
            )
        checked_through = state.step
        return values[0], values[1], values[2]

    bar = progress(
        loader, total=total_steps, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="step",
        disable=not dist.is_main,
    )  # fmt: skip
    for images, targets in bar:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        scheduler.step_update(state.step)
        loss, correct = train_step(
            model, images, targets, optimizer=optimizer, criterion=criterion, scaler=scaler,
            clip_grad=recipe.clip_grad, use_amp=amp_dtype is not None, device_type=device.type,
            amp_dtype=amp_dtype or torch.float16,
        )  # fmt: skip
        state.step += 1
        n = targets.shape[0]
        seen += n
        loss_sum += loss.to(acc_dtype) * n
        correct_sum += correct
        if state.step % log_every == 0:
            loss_value, _, _ = read(loss)
            set_postfix(bar, loss=f"{loss_value:.4f}")
            if log_metrics:
                log_metrics(
                    {"train/loss_step": loss_value, "train/lr": optimizer.param_groups[0]["lr"]},
                    state.step,
                )
    if seen == 0:
        raise RuntimeError(f"epoch {epoch}: the training loader yielded no batch; check the shards")
    _, total_loss, correct = read(loss)
    if dist.enabled:
        seen = int(dist.all_reduce_sum(torch.tensor(float(seen), dtype=acc_dtype, device=device)))
    return {
        "train/loss": total_loss / seen,
        "train/acc": 100.0 * correct / seen,
        "train/epoch_seconds": time.perf_counter() - t0,
    }


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
    stop_after_epochs: int | None = None,
    run_key: str = "",
    dist: Dist = SINGLE,
    on_epoch_end: Callable[[TrainState], None] | None = None,
    compile_step: bool = False,
) -> TrainState:
    """Train ``model`` for ``recipe.epochs``, resuming from ``out_dir/last.pt`` if present.

    Composes :func:`build_optimizer`, :func:`build_scheduler`, :func:`resume_or_start` and,
    per epoch, :func:`train_one_epoch` (reseeded from ``(seed, epoch)`` first), then writes
    the checkpoint. The loss is read from the device every ``recipe.log_every`` steps and
    at the end of each epoch; a NaN/inf loss raises :class:`TrainingDiverged` naming the
    step of the read where it was detected (see :func:`train_one_epoch`), before that
    epoch's checkpoint is written: a diverged epoch is never checkpointed.

    Args:
        loader_for_epoch: ``epoch -> iterable of (images, labels)``, deterministic per epoch.
        steps_per_epoch: optimiser steps per epoch (for the schedule's length).
        out_dir: where ``last.pt`` lives.
        log_metrics: ``(metrics, step) -> None`` sink (e.g. MLflow): ``train/loss_step`` and
            ``train/lr`` every ``recipe.log_every`` steps; ``train/loss``, ``train/acc`` and
            ``train/epoch_seconds`` of each epoch before its checkpoint is written, and, on
            resuming, those of every epoch in the checkpoint's history again (a crash may have
            lost them). The sink keeps one value per metric and step (it ignores a repeat).
        stop_after_epochs: stop (as if killed) after this many epochs of *this call*; for
            testing resumption.
        run_key: identifies the configuration (model, recipe, data, seed); a checkpoint
            written under another key is moved aside (``last.pt.stale``) instead of resumed.
        dist: this rank under torchrun (:func:`glsim.train.distributed.setup`): the model
            is stepped in DistributedDataParallel, ``loader_for_epoch`` must give every
            rank its share with the same batch count, and only rank 0 logs and writes the
            checkpoint (every rank waits for it at a barrier). Each rank resumes from the
            same ``last.pt``.
        on_epoch_end: called on rank 0 with the state after each epoch, just before its
            checkpoint is written (e.g. to keep a copy of the weights of every epoch).
        compile_step: step through ``torch.compile`` (:func:`distribute`); not in the run key.

    Returns:
        The final :class:`TrainState` (its ``history`` holds per-epoch metrics).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if recipe.amp and device.type == "cuda" else None
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    ckpt = out_dir / CHECKPOINT_NAME
    main = dist.is_main
    log_metrics = log_metrics if main else None
    state = _resume_every_rank(ckpt, run_key, model, optimizer, scaler, dist, recipe.epochs)
    if log_metrics:
        for done in state.history:
            log_metrics(*epoch_metrics(done, steps_per_epoch))
    # after the resume: DDP starts every rank from rank 0's weights
    net = distribute(model, criterion, dist, device, compile_step=compile_step)

    epochs_run = 0
    while state.epoch < recipe.epochs:
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
            break
        epoch = state.epoch
        # rank 0 draws what a single process draws; other ranks their own drop-path masks
        seed_everything(epoch_seed(seed, epoch) + dist.rank * RANK_SEED_STRIDE)
        metrics = {
            "epoch": float(epoch + 1),
            **train_one_epoch(
                net, loader_for_epoch(epoch), epoch=epoch, state=state, optimizer=optimizer,
                scheduler=scheduler, criterion=criterion, scaler=scaler, recipe=recipe,
                device=device, log_metrics=log_metrics, dist=dist, total_steps=steps_per_epoch,
            ),
        }  # fmt: skip
        state.epoch += 1
        metrics["step"] = float(state.step)
        state.history.append(metrics)
        if main and on_epoch_end is not None:  # before the checkpoint: a run killed in
            on_epoch_end(state)  # between redoes the epoch, so the call is never skipped
        if log_metrics:  # sent before the checkpoint: a crash in between reruns the epoch
            log_metrics(*epoch_metrics(metrics, steps_per_epoch))
        if main:
            extra: dict[str, Any] = {"run_key": run_key, "world_size": dist.world_size}
            save_checkpoint(
                ckpt, model=model, optimizer=optimizer, scaler=scaler, state=state, extra=extra
            )
        dist.barrier()  # no rank starts an epoch its resume could not reproduce
        epochs_run += 1
        if main:
            print(_epoch_line(metrics, state.epoch, recipe.epochs), flush=True)
    return state


def _resume_every_rank(
    ckpt: Path, run_key: str, model: nn.Module, optimizer, scaler, dist: Dist, epochs: int
) -> TrainState:
    """:func:`resume_or_start` on every rank: rank 0 first, which decides (a stale checkpoint
    is moved aside once) and says where it resumes, then the others, after a barrier."""
    state = None
    if dist.is_main:
        state = resume_or_start(ckpt, run_key, model, optimizer, scaler, dist.world_size)
        if state.epoch:
            print(
                f"resuming from {ckpt}: epoch {state.epoch}/{epochs}, step {state.step}",
                flush=True,
            )
    dist.barrier()
    if not dist.is_main:
        state = resume_or_start(ckpt, run_key, model, optimizer, scaler, dist.world_size)
    return state


def _epoch_line(metrics: dict[str, float], epoch: int, epochs: int) -> str:
    return (
        f"epoch {epoch}/{epochs} loss {metrics['train/loss']:.4f} "
        f"acc {metrics['train/acc']:.2f}% ({metrics['train/epoch_seconds']:.1f}s)"
    )


def epoch_metrics(entry: dict[str, float], steps_per_epoch: int) -> tuple[dict[str, float], int]:
    """An epoch's history entry as the metrics a sink logs and the step it logs them at
    (the optimiser steps done by the end of that epoch; an entry written before the step
    was kept in the history assumes ``steps_per_epoch`` in every epoch)."""
    step = int(entry.get("step", entry["epoch"] * steps_per_epoch))
    return {k: v for k, v in entry.items() if k not in ("epoch", "step")}, step


def load_trained(model: nn.Module, out_dir: str | Path) -> dict[str, Any]:
    """Load the final weights of a finished run into ``model``; returns the run's state and
    the ``run_key`` it was trained under (empty for a checkpoint written without one)."""
    state, extra = load_checkpoint(Path(out_dir) / CHECKPOINT_NAME, model=model)
    return {
        "epoch": state.epoch, "step": state.step, "history": state.history,
        "run_key": extra.get("run_key", ""),
    }  # fmt: skip
