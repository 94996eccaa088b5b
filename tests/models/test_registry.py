"""glsim/models/registry.py and the one model contract: builders take plain keyword arguments
(unknown ones are named), every registered model's ``forward_explain`` returns a
``ModelOutput``, and the models layer loads lazily (its choices import no torch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from tiny import TINY_VIT

import glsim
from glsim.models import create_model, list_models, register_model
from glsim.models.gls import vit_gls_boxes
from glsim.models.output import ModelOutput

VIT_MODELS = ("vit", "glsim", "transfg", "ffvt")
CNN_MODELS = ("resnet101", "cal")
TINY = {"backbone": "vit_tiny_patch16_224", "backbone_overrides": dict(TINY_VIT)}


def build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = TINY if name in VIT_MODELS else {}
    return create_model(name, num_classes=5, image_size=32, **extra, **kwargs).eval()


def fresh_python(code: str) -> None:
    """Run ``code`` in a new interpreter that imports this checkout's glsim."""
    root = str(Path(glsim.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_the_contract_covers_every_registered_model():
    assert set(list_models()) == {*VIT_MODELS, *CNN_MODELS}


def test_unknown_keyword_arguments_are_all_named_with_the_valid_ones():
    with pytest.raises(TypeError) as err:
        create_model("vit", num_classes=5, image_size=32, top_k=4, stride=2)
    assert str(err.value) == (
        "model 'vit' takes no argument(s) 'top_k', 'stride'; "
        "valid: backbone, backbone_overrides, cls_block, drop_path_rate, weights"
    )
    with pytest.raises(
        TypeError,
        match=r"'resnet101' takes no argument\(s\) 'backbone'; valid: drop_path_rate, weights$",
    ):
        create_model("resnet101", num_classes=5, image_size=32, backbone="vit_base_patch16_224")


def test_a_builder_must_name_its_arguments():
    def catch_all(*, num_classes: int, image_size: int, **kwargs):  # pragma: no cover
        raise AssertionError

    with pytest.raises(TypeError, match="must name its arguments"):
        register_model("catch_all_for_test")(catch_all)
    assert "catch_all_for_test" not in list_models()


@pytest.mark.parametrize("name", [*VIT_MODELS, *CNN_MODELS])
def test_forward_explain_returns_logits_and_for_vits_boxes(name):
    model = build(name)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_explain(images, top_k=4)
        logits = model(images)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (3, 5) and torch.allclose(out.logits, logits, atol=1e-6)
    if name in CNN_MODELS:
        assert out.scores is None and out.boxes is None
        assert not hasattr(model, "encoder")
        return
    assert isinstance(model.encoder, VisionTransformer)  # pretrained_norm reads it
    assert out.boxes.shape == (3, 4) and out.boxes.dtype == torch.int64
    x0, y0, x1, y1 = out.boxes.unbind(-1)
    assert ((x0 >= 0) & (x0 < x1) & (x1 <= 32) & (y0 >= 0) & (y0 < y1) & (y1 <= 32)).all()
    assert out.scores.shape == (3, model.encoder.patch_embed.num_patches)


def test_vit_explains_with_one_encoder_pass_as_evaluation_did():
    model = build("vit")
    images = torch.randn(3, 3, 32, 32)
    passes = []
    model.encoder.patch_embed.register_forward_hook(lambda *_: passes.append(1))
    with torch.no_grad():
        out = model.forward_explain(images, top_k=4)
        assert len(passes) == 1
        assert torch.equal(out.logits, model.encoder(images))
        assert torch.equal(out.boxes, vit_gls_boxes(model.encoder, images, top_k=4))
        without = model.forward_explain(images)
    assert without.boxes is None and torch.equal(without.scores, out.scores)  # (B, 16)


@pytest.mark.parametrize(
    ("name", "kwargs"), [("vit", {"cls_block": True}), ("transfg", {}), ("ffvt", {})]
)
def test_vit_baselines_explain_with_their_encoders_gls_boxes(name, kwargs):
    model = build(name, **kwargs)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_explain(images, top_k=4)
        assert torch.equal(out.boxes, vit_gls_boxes(model.encoder, images, top_k=4))
        plain = model.forward_explain(images)
    assert plain.scores is None and plain.boxes is None  # no second pass unless asked
    assert torch.equal(plain.logits, out.logits)


def test_transfg_boxes_follow_its_overlapping_patch_stride():
    model = build("transfg")  # P = 8, stride 6: a 5 x 5 grid over 32 px
    with torch.no_grad():
        boxes = model.forward_explain(torch.randn(8, 3, 32, 32), top_k=1).boxes
    assert ((boxes[:, 2] - boxes[:, 0]) == 8).all() and (boxes[:, :2] % 6 == 0).all()
    assert (boxes[:, 2:] <= 32).all()


def test_glsim_top_k_none_is_its_own_and_a_given_one_drives_the_crop():
    model = build("glsim", top_k=1)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        own = model.forward_explain(images)
        whole = model.forward_explain(images, top_k=16)  # every token: the whole image
    assert ((own.boxes[:, 2] - own.boxes[:, 0]) == 8).all()
    assert whole.boxes.tolist() == [[0, 0, 32, 32]] * 2
    assert torch.allclose(whole.crops, images, atol=1e-5)


def test_models_layer_loads_lazily_and_choices_import_no_torch():
    fresh_python(
        "import sys\n"
        "import glsim.models.choices, glsim.models\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm'))\n"
        "assert not loaded, loaded\n"
        "assert 'glsim.config' not in sys.modules\n"
    )


def test_importing_the_registry_alone_still_finds_every_model():
    fresh_python(
        "import sys\n"
        "from glsim.models.registry import list_models\n"
        "assert 'glsim.models.glsim' not in sys.modules\n"
        f"assert set(list_models()) == {set(VIT_MODELS + CNN_MODELS)!r}, list_models()\n"
        "assert not any(m.startswith('glsim') and not m.startswith('glsim.models') and m != 'glsim'"
        " for m in sys.modules), 'the models layer imported the rest of glsim'\n"
    )
