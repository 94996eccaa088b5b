"""glsim/train/self_distillation.py through pretrain_backbone at a tiny size: the loss
falls, resumption is exact (student, teacher, heads, centre), the kept weights load into
the fine-tuning backbone, and the run key tells the tasks apart."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_params

from glsim import runs
from glsim.models.backbone import create_vit
from glsim.train.checkpoint import CHECKPOINT_NAME
from glsim.train.pretrain import pretrain_backbone
from glsim.train.self_distillation import distillation_loss, knn_classify, random_resized_views

DISTIL = {"local_size": 16, "out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32, "local_crops": 2}


def distil_params(tmp_path, **pretrain):
    return tiny_params(
        tmp_path,
        pretrain={
            "task": "self_distillation", "images_per_epoch": 64, "batch_size": 16, "epochs": 3,
            "lr": 5e-4, "warmup_steps": 2, "self_distillation": dict(DISTIL), **pretrain,
        },
    )  # fmt: skip


def checkpoint(work) -> dict:
    return torch.load(work / CHECKPOINT_NAME, map_location="cpu", weights_only=False)


def test_loss_falls_after_the_student_spreads_out(tmp_path):
    # DINO's loss first rises towards log K (the student spreads out while the teacher's
    # targets disagree between views), then falls as the views come to agree
    params = distil_params(tmp_path, epochs=8, images_per_epoch=128)
    report = pretrain_backbone(params, work_dir=tmp_path / "work")
    losses = [h["train/loss"] for h in checkpoint(tmp_path / "work")["state"]["history"]]
    assert all(math.isfinite(v) for v in losses)
    peak = losses.index(max(losses))
    assert peak < len(losses) - 2 and losses[-1] < max(losses) - 0.02, losses
    assert losses[-1] < math.log(DISTIL["out_dim"])
    assert report["task"] == "self_distillation" and 0 <= report["upstream_test_acc"] <= 100


def test_resume_after_a_kill_is_bit_identical(tmp_path, monkeypatch):
    params = distil_params(tmp_path)
    pretrain_backbone(params, work_dir=tmp_path / "straight")
    straight = checkpoint(tmp_path / "straight")["model"]

    from glsim.train import loop

    fit = loop.fit
    monkeypatch.setattr(
        "glsim.train.pretrain.fit", lambda *a, **kw: fit(*a, **kw, stop_after_epochs=1)
    )
    params.pretrain.output = tmp_path / "resumed.safetensors"
    pretrain_backbone(params, work_dir=tmp_path / "resumed")  # killed after epoch 1
    assert checkpoint(tmp_path / "resumed")["state"]["epoch"] == 1
    monkeypatch.setattr("glsim.train.pretrain.fit", fit)
    pretrain_backbone(params, work_dir=tmp_path / "resumed")
    resumed = checkpoint(tmp_path / "resumed")["model"]
    assert resumed.keys() == straight.keys()
    for part in ("student.", "teacher.", "student_head.", "teacher_head.", "centre", "ema_steps"):
        assert any(k.startswith(part) for k in straight), part
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not torch.equal(straight["teacher.pos_embed"], straight["student.pos_embed"])
    assert int(straight["ema_steps"]) == 3 * 4  # one EMA update per optimiser step
    kept = load_file(str(params.pretrain.output))
    assert all(torch.equal(kept[k], straight[f"teacher.{k}"]) for k in kept)  # the teacher


def test_kept_weights_load_into_the_fine_tuning_backbone(tmp_path):
    params = distil_params(tmp_path, epochs=1)
    pretrain_backbone(params, work_dir=tmp_path / "work")
    bb = params.model.backbone
    vit = create_vit(
        bb.name, image_size=params.data.image_size, num_classes=5,
        weights=params.pretrain.output, **bb.overrides,
    )  # fmt: skip
    kept = load_file(str(params.pretrain.output))
    assert not any(k.startswith("head") for k in kept)
    assert torch.equal(vit.state_dict()["pos_embed"], kept["pos_embed"])
    assert vit(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_pretrain_key_tells_the_tasks_apart(tmp_path):
    distil = distil_params(tmp_path)
    colour = distil.model_copy(deep=True)
    colour.pretrain.task = "colour"
    assert runs.pretrain_key(distil) != runs.pretrain_key(colour)
    # its own section is part of the key for self-distillation only
    other = distil.model_copy(deep=True)
    other.pretrain.self_distillation.teacher_temp = 0.07
    assert runs.pretrain_key(other) != runs.pretrain_key(distil)
    colour_other = colour.model_copy(deep=True)
    colour_other.pretrain.self_distillation.teacher_temp = 0.07
    assert runs.pretrain_key(colour_other) == runs.pretrain_key(colour)


def test_views_loss_and_knn():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    views = random_resized_views(images, 3, 4, (1.0, 1.0))  # (3*2, 3, 4, 4)
    assert views.shape == (6, 3, 4, 4)
    # view-major crops inside each image: every value within that image's range
    for v in range(3):
        for b in range(2):
            assert (
                images[b].min()
                <= views[v * 2 + b].min()
                <= views[v * 2 + b].max()
                <= images[b].max()
            )
    # identical one-hot teacher and student on other views: zero loss; self-pairs excluded
    one_hot = torch.eye(4)[None].expand(2, -1, -1)  # (G=2, B=4, K=4)
    student = torch.cat([one_hot, torch.full((1, 4, 4), 0.25)]).clamp_min(1e-9).log()
    assert distillation_loss(student[:2], one_hot) == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(student, one_hot) == pytest.approx(math.log(4) / 2, abs=1e-5)
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    predicted = knn_classify(bank, torch.tensor([0, 0, 1]), torch.tensor([[0.0, 2.0], [3.0, 0.1]]),
                             num_classes=2, k=1)  # fmt: skip
    assert predicted.tolist() == [1, 0]


def test_module_defaults_are_the_schema_defaults():
    """The module takes plain keyword arguments (usable without a params tree, as the models'
    builders are), so it repeats its schema section's defaults: held equal here."""
    import inspect

    from glsim.config import SelfDistillationParams
    from glsim.train.self_distillation import SelfDistillation

    schema = SelfDistillationParams().model_dump()
    signature = inspect.signature(SelfDistillation.__init__).parameters
    module = {k: p.default for k, p in signature.items() if p.default is not p.empty}
    shared = module.keys() & schema.keys()
    assert shared >= {"out_dim", "teacher_temp", "momentum", "global_crops", "local_size"}
    assert {
        k: tuple(v) if isinstance(v, list) else v for k, v in schema.items() if k in shared
    } == {k: module[k] for k in shared}
