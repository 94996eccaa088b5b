"""Upstream pretraining of the backbone on the generated task (the stand-in for ImageNet-21k).

``pretrain.task`` is supervised (``colour`` or ``shape_colour``: a linear head on the
generated label) or ``self_distillation`` (DINO on the same images without their labels,
:mod:`glsim.train.self_distillation`; the teacher's backbone is kept).

The result is a plain ``.safetensors`` weights file that ``vit`` and ``glsim`` load through
the same local-weights path a real ImageNet-21k file takes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from glsim.config import Params, write_resolved
from glsim.data.synthetic import upstream_batch
from glsim.models.backbone import WeightsError, create_vit, pretrained_norm
from glsim.runs import pretrain_dir, pretrain_key, pretrain_report
from glsim.train.checkpoint import result_record
from glsim.train.claim import claim
from glsim.train.loop import Recipe, fit
from glsim.train.self_distillation import AGREE, SelfDistillation, knn_classify
from glsim.utils import (
    _atomic,
    atomic_torch_save,
    atomic_write_json,
    configure_determinism,
    resolve_device,
    seed_everything,
)


def save_vit_weights(model: VisionTransformer, path: str | Path) -> Path:
    """Save the backbone (without its head), atomically, in the format its suffix names:
    ``.safetensors``, or a torch state dict for ``.pth``/``.pt``/``.bin`` (files that
    :func:`glsim.models.backbone.load_vit_weights` reads)."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise WeightsError(
            f"{path}: cannot save weights as {path.suffix!r}; name the file .safetensors "
            "(or .pth/.pt/.bin), e.g. pretrain.output: models/pretrained/backbone.safetensors"
        )
    state = backbone_state(model)
    if path.suffix == ".safetensors":
        return _atomic(path, lambda p: save_file(state, str(p)))
    return atomic_torch_save(state, path)


def backbone_state(model: VisionTransformer) -> dict[str, Tensor]:
    """The tensors :func:`save_vit_weights` writes: the state dict without the head."""
    return {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("head.")
    }


def _to_tensor(images: np.ndarray, mean, std) -> Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)  # (B, 3, S, S)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def upstream_stream(
    *,
    seed: int,
    epoch: int,
    steps: int,
    batch_size: int,
    num_classes: int,
    size: int,
    mean,
    std,
    task: str,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Fresh upstream batches for one epoch, deterministic from (seed, epoch, step)."""
    for step in range(steps):
        images, labels = upstream_batch(
            [seed, epoch, step], batch_size, num_classes=num_classes, size=size, task=task
        )
        yield _to_tensor(images, mean, std), torch.from_numpy(labels)


@torch.no_grad()
def upstream_accuracy(
    model, *, seed: int, count: int, num_classes: int, size: int, mean, std, device, task: str
) -> float:
    model.eval()
    images, labels = upstream_batch(
        [seed, 10**6], count, num_classes=num_classes, size=size, task=task
    )
    correct = 0
    for i in range(0, count, 256):
        x = _to_tensor(images[i : i + 256], mean, std).to(device)
        correct += (model(x).argmax(-1).cpu() == torch.from_numpy(labels[i : i + 256])).sum().item()
    return 100.0 * correct / count


@torch.no_grad()
def upstream_knn_accuracy(
    backbone: VisionTransformer, *, seed: int, count: int, num_classes: int, size: int, mean,
    std, device, task: str, k: int,
) -> float:  # fmt: skip
    """Top-1 (%) of a ``k``-NN vote on ``backbone``'s CLS feature: ``count`` labelled
    generated images as the bank, the upstream test images of :func:`upstream_accuracy` as
    the queries (the labels are used here only)."""
    backbone.eval()

    def features(stream_seed: list[int]) -> tuple[Tensor, Tensor]:
        images, labels = upstream_batch(
            stream_seed, count, num_classes=num_classes, size=size, task=task
        )
        feats = [
            backbone(_to_tensor(images[i : i + 256], mean, std).to(device)).cpu()
            for i in range(0, count, 256)
        ]  # (B, D) each: the CLS feature (no head)
        return torch.cat(feats), torch.from_numpy(labels)

    bank, bank_labels = features([seed, 10**6 + 1])
    queries, labels = features([seed, 10**6])
    predicted = knn_classify(bank, bank_labels, queries, num_classes=num_classes, k=k)
    return 100.0 * (predicted == labels).float().mean().item()


def snapshot_path(snapshot_dir: str | Path, epoch: int) -> Path:
    """The weights file of pretraining epoch ``epoch`` (0: the initial weights)."""
    return Path(snapshot_dir) / f"epoch{epoch:03d}.safetensors"


def pretrain_backbone(
    params: Params,
    *,
    work_dir: str | Path,
    report_path: str | Path | None = None,
    snapshot_dir: str | Path | None = None,
    snapshot_info: bool = False,
) -> dict:
    """Pretrain ``params.model.backbone`` on the upstream task; write its weights file.

    With ``snapshot_dir``, the weights before the first step and after every epoch are
    kept there too (:func:`snapshot_path`), for the localisation curve; with
    ``snapshot_info`` also ``epoch<E>.json`` beside each: the step and the upstream test
    accuracy of those weights (the training itself is the same either way).

    The checkpoint in ``work_dir`` is keyed by :func:`glsim.runs.pretrain_key`: a killed
    run of the same configuration resumes, a finished one is not trained again, and one of
    another configuration is moved aside (``last.pt.stale``) instead of resumed.

    One trainer at a time: ``work_dir`` is claimed (:func:`glsim.train.claim.claim`)
    while it trains; a second one waits ``GLSIM_CLAIM_WAIT_S`` seconds (default 0), then
    raises :class:`~glsim.train.claim.RunClaimed`.

    Returns a report with the upstream test accuracy, the run key and the
    :func:`~glsim.train.checkpoint.result_record` of the weights file (also written to
    ``report_path``).
    """
    with claim(Path(work_dir), root=params.base.runs_dir):
        return _pretrain_claimed(
            params, work_dir=work_dir, report_path=report_path, snapshot_dir=snapshot_dir,
            snapshot_info=snapshot_info,
        )  # fmt: skip


def _pretrain_claimed(
    params: Params,
    *,
    work_dir: str | Path,
    report_path: str | Path | None,
    snapshot_dir: str | Path | None,
    snapshot_info: bool,
) -> dict:
    """:func:`pretrain_backbone`'s work, ``work_dir`` claimed."""
    cfg, bb, size = params.pretrain, params.model.backbone, params.data.image_size
    device = resolve_device(params.base.device)
    # the thread count changes the weights: fixed by params, never by the machine's cores
    configure_determinism(
        params.base.num_threads, params.base.deterministic, device, params.base.numerics
    )
    seed_everything(params.base.seed)  # the initial weights depend on the seed only
    steps = max(1, cfg.images_per_epoch // cfg.batch_size)
    distil = cfg.task == "self_distillation"
    if distil:
        sd = cfg.self_distillation
        # the local views are smaller than the global ones: position embeddings resampled
        backbone = create_vit(
            bb.name, image_size=size, num_classes=0, **{**bb.overrides, "dynamic_img_size": True}
        )
        model = SelfDistillation(
            backbone, total_steps=cfg.epochs * steps,
            **sd.model_dump(exclude={"images", "knn_k"}),
        )  # fmt: skip
        kept, images_task = model.teacher, sd.images
    else:
        model = create_vit(bb.name, image_size=size, num_classes=cfg.num_classes, **bb.overrides)
        kept, images_task = model, cfg.task
    mean, std = pretrained_norm(kept)
    recipe = Recipe(
        epochs=cfg.epochs,
        lr=cfg.lr,
        optimizer="adamw",
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        clip_grad=1.0,
        label_smoothing=cfg.label_smoothing,
    )
    seed = params.base.seed
    key = pretrain_key(params)

    def loader_for_epoch(epoch: int):
        stream = upstream_stream(
            seed=seed, epoch=epoch, steps=steps, batch_size=cfg.batch_size,
            num_classes=cfg.num_classes, size=size, mean=mean, std=std, task=images_task,
        )  # fmt: skip
        if distil:  # no labels: the targets only count teacher-student agreement
            return ((x, torch.full_like(y, AGREE)) for x, y in stream)
        return stream

    def accuracy() -> float:
        evaluate = upstream_knn_accuracy if distil else upstream_accuracy
        extra = {"k": cfg.self_distillation.knn_k} if distil else {}
        return evaluate(
            kept, seed=seed, count=cfg.test_images, num_classes=cfg.num_classes, size=size,
            mean=mean, std=std, device=device, task=images_task, **extra,
        )  # fmt: skip

    def snapshot(epoch: int, step: int) -> None:
        path = save_vit_weights(kept, snapshot_path(snapshot_dir, epoch))
        if snapshot_info:
            info = {"epoch": epoch, "step": step, "upstream_test_acc": round(accuracy(), 2)}
            atomic_write_json(path.with_suffix(".json"), info)

    on_epoch_end = None
    if snapshot_dir is not None:
        if not snapshot_path(snapshot_dir, 0).is_file():  # the initial weights (seeded above)
            snapshot(0, 0)

        def on_epoch_end(state) -> None:  # upstream_accuracy leaves the model in eval mode:
            snapshot(state.epoch, state.step)  # the next epoch sets train mode again

    state = fit(
        model, loader_for_epoch=loader_for_epoch, steps_per_epoch=steps, recipe=recipe,
        out_dir=work_dir, seed=seed, device=device, run_key=key, on_epoch_end=on_epoch_end,
    )  # fmt: skip
    acc = accuracy()
    save_vit_weights(kept, cfg.output)
    report = {
        "task": cfg.task,
        **({"upstream_eval": f"{cfg.self_distillation.knn_k}-NN, CLS feature"} if distil else {}),
        "upstream_test_acc": round(acc, 2),
        "epochs": state.epoch,
        "steps": state.step,
        "final_train_loss": round(state.history[-1]["train/loss"], 4),
        "weights": str(cfg.output),
        "run_key": key,
        **result_record(backbone_state(kept)),
    }
    if report_path:
        atomic_write_json(report_path, report)
    return report


def pretrain(params: Params) -> dict[str, Any]:
    """The `pretrain` stage: pretrain the backbone on the upstream task into
    ``pretrain.output`` (work folder :func:`glsim.runs.pretrain_dir`, keyed by
    :func:`glsim.runs.pretrain_key`); returns the report also written to
    :func:`glsim.runs.pretrain_report`. Called through :mod:`glsim.protocol.pretrain`."""
    work = pretrain_dir(params)
    write_resolved(params, work)
    return pretrain_backbone(params, work_dir=work, report_path=pretrain_report(params))
