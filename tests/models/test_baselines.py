"""TransFG, FFVT, ResNet-101 and CAL: shapes, losses, gradients and their selection steps."""

from __future__ import annotations

import pytest
import timm
import torch

from glsim.models.backbone import WeightsError
from glsim.models.cal import CAL, attention_boxes, attention_drop
from glsim.models.ffvt import select_tokens
from glsim.models.registry import create_model
from glsim.models.resnet import load_resnet_weights
from glsim.models.transfg import contrastive_loss

TINY_VIT = {"backbone_overrides": dict(patch_size=8, embed_dim=64, depth=2, num_heads=2)}
CRITERION = torch.nn.CrossEntropyLoss()


def _batch(batch: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(batch, 3, size, size), torch.arange(batch) % 3


def _assert_grads(model: torch.nn.Module, *names: str) -> None:
    params = dict(model.named_parameters())
    for name in names:
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, f"no gradient reaches {name}"


# --- TransFG ----------------------------------------------------------------------------


def test_transfg_overlapping_patches_and_outputs() -> None:
    model = create_model("transfg", num_classes=5, image_size=32, **TINY_VIT)
    # stride 6 (3/4 of P = 8): (32 - 8) // 6 + 1 = 5 patches per side
    assert model.encoder.patch_embed.proj.stride == (6, 6)
    assert model.encoder.pos_embed.shape == (1, 1 + 25, 64)
    images, targets = _batch()
    assert model.forward_features(images).shape == (4, 1 + 2, 64)  # CLS + one part per head
    loss, logits = model.training_loss(images, targets, CRITERION)
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.shape == (4, 5)
    loss.backward()
    _assert_grads(
        model, "encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight", "head.weight"
    )
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (4, 5)


def test_transfg_selects_each_heads_psm_argmax() -> None:
    model = create_model("transfg", num_classes=5, image_size=32, **TINY_VIT)
    x = torch.arange(2 * 26 * 64, dtype=torch.float32).view(2, 26, 64)
    attn = torch.eye(26).repeat(2, 2, 1, 1)  # (B, H, T, T)
    attn[:, :, 0] = 0.0
    attn[0, 0, 0, 4], attn[0, 1, 0, 1] = 1.0, 1.0  # sample 0: heads pick patches 3 and 0
    attn[1, 0, 0, 25], attn[1, 1, 0, 25] = 1.0, 1.0  # sample 1: both pick patch 24
    tokens = model.select_parts(x, [attn])
    assert torch.equal(tokens[0], x[0, [0, 4, 1]])
    assert torch.equal(tokens[1], x[1, [0, 25, 25]])


def test_contrastive_loss_hand_worked() -> None:
    same_class_orthogonal = contrastive_loss(torch.eye(2), torch.tensor([0, 0]))
    assert same_class_orthogonal.item() == pytest.approx(2 * (1 - 0) / 4)
    diff_class_identical = contrastive_loss(torch.ones(2, 2), torch.tensor([0, 1]))
    assert diff_class_identical.item() == pytest.approx(2 * (1 - 0.4) / 4)
    over_margin = contrastive_loss(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), torch.tensor([0, 1]))
    assert over_margin.item() == pytest.approx(2 * (0.6 - 0.4) / 4)  # cos 0.6, margin 0.4
    under_margin = contrastive_loss(torch.tensor([[1.0, 0.0], [0.3, 0.9539]]), torch.tensor([0, 1]))
    assert under_margin.item() == pytest.approx(0.0, abs=1e-6)  # cos 0.3 < 0.4: no push


# --- FFVT -------------------------------------------------------------------------------


def test_ffvt_fuses_top_k_tokens_of_each_layer() -> None:
    model = create_model("ffvt", num_classes=5, image_size=32, **TINY_VIT, tokens_per_layer=4)
    images, targets = _batch()
    assert model.forward_features(images).shape == (4, 1 + 1 * 4, 64)  # L - 1 = 1 layer
    torch.nn.init.normal_(model.head.weight)  # the zero-initialised head would block gradients
    loss = CRITERION(model(images), targets)
    loss.backward()
    _assert_grads(
        model, "encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight", "head.weight"
    )
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (4, 5)
    with pytest.raises(ValueError, match="tokens_per_layer"):
        create_model("ffvt", num_classes=5, image_size=32, **TINY_VIT, tokens_per_layer=17)


def test_select_tokens_skips_cls_and_ranks_by_score() -> None:
    x = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # token value = its index
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]])
    assert select_tokens(x, scores, 2)[..., 0].tolist() == [[2.0, 3.0], [5.0, 7.0]]


# --- ResNet-101 -------------------------------------------------------------------------


def test_resnet101_forward() -> None:
    model = create_model("resnet101", num_classes=5, image_size=32).eval()
    with torch.no_grad():
        assert model(_batch(2)[0]).shape == (2, 5)


@pytest.mark.slow
def test_resnet101_backward() -> None:
    model = create_model("resnet101", num_classes=5, image_size=32)
    images, targets = _batch(2)
    CRITERION(model(images), targets).backward()
    # timm zero-inits each block's last BN scale, so grads reach the stem, shortcuts and BNs
    _assert_grads(
        model,
        "backbone.conv1.weight",
        "backbone.layer4.0.downsample.0.weight",
        "backbone.layer4.2.bn3.weight",
        "backbone.fc.weight",
    )


def test_resnet_weights_load_skip_head_and_name_bad_keys(tmp_path) -> None:
    source = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    target = timm.create_model("resnet18", pretrained=False, num_classes=7)
    load_resnet_weights(target, path)  # 1000-class fc is skipped
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    wrong = timm.create_model("resnet34", pretrained=False, num_classes=7)
    with pytest.raises(WeightsError, match=r"resnet18\.pth.*missing keys: \['layer1\.2"):
        load_resnet_weights(wrong, path)
    with pytest.raises(WeightsError, match="not found"):
        load_resnet_weights(target, tmp_path / "absent.pth")


# --- CAL --------------------------------------------------------------------------------


def _small_cal() -> CAL:
    torch.manual_seed(0)
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
    return CAL(resnet, num_classes=3, num_attentions=4)


def test_cal_training_loss_and_multi_crop_inference() -> None:
    model = _small_cal()
    images, targets = _batch(3, size=64)
    loss, logits = model.training_loss(images, targets, CRITERION)
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.shape == (3, 3)
    assert model.feature_center[targets].abs().sum() > 0  # running class centres moved
    loss.backward()
    _assert_grads(model, "backbone.conv1.weight", "attention.0.weight", "fc.weight")
    model.eval()
    with torch.no_grad():
        logits = model(images)
        single = model.forward_net(images).logits
    assert logits.shape == (3, 3) and not torch.allclose(logits, single)  # 8 views averaged


def test_attention_boxes_enclose_the_peak_with_padding() -> None:
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 0, 0] = 1.0  # top-left peak
    maps[1, 0, 2:, 1:3] = 1.0  # bottom-centre block
    boxes = attention_boxes(maps, torch.tensor([0.5, 0.5]), 0.0, (16, 16))
    # align_corners upsampling 4 -> 16: pixel p maps to p * 3 / 15; >= half the peak
    # for the top-left spike means p * 0.2 <= 0.5 -> p <= 2
    assert boxes[0].tolist() == [0, 0, 3, 3]
    assert boxes[1].tolist() == [3, 8, 13, 16]
    padded = attention_boxes(maps, torch.tensor([0.5, 0.5]), 0.25, (16, 16))
    assert padded[0].tolist() == [0, 0, 7, 7] and padded[1].tolist() == [0, 4, 16, 16]


def test_attention_drop_erases_the_peak() -> None:
    images = torch.ones(1, 3, 8, 8)
    maps = torch.zeros(1, 1, 2, 2)
    maps[0, 0, 1, 1] = 1.0
    dropped = attention_drop(images, maps, torch.tensor([0.5]))
    assert dropped[0, :, -1, -1].sum() == 0 and dropped[0, :, 0, 0].sum() == 3


@pytest.mark.slow
def test_cal_registered_on_resnet101() -> None:
    model = create_model("cal", num_classes=3, image_size=64)
    images, targets = _batch(2, size=64)
    loss, _ = model.training_loss(images, targets, CRITERION)
    loss.backward()
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (2, 3)
