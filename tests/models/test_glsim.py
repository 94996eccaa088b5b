import pytest
import torch
from torch import nn

from glsim.models import create_model, list_models
from glsim.models.glsim import GLSim


def make(tiny_backbone, **glsim) -> GLSim:
    return create_model("glsim", num_classes=5, image_size=32, **tiny_backbone, **glsim)


def test_registry_has_glsim_and_vit_and_names_close_match():
    assert {"glsim", "vit"} <= set(list_models())
    with pytest.raises(KeyError, match="did you mean 'glsim'"):
        create_model("glsimm", num_classes=2, image_size=32)


def test_forward_shapes(tiny_backbone):
    model = make(tiny_backbone, top_k=3)
    out = model.forward_explain(torch.randn(4, 3, 32, 32))
    assert out.logits.shape == (4, 5)
    assert out.scores.shape == (4, 16)  # 4x4 grid of 8-px patches
    assert out.boxes.shape == (4, 4) and out.boxes.dtype == torch.int64
    assert out.crops.shape == (4, 3, 32, 32)
    assert out.cls_global.shape == out.cls_local.shape == (4, 64)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_boxes_enclose_top_k_gls_tokens(tiny_backbone):
    model = make(tiny_backbone, top_k=2).eval()
    images = torch.randn(3, 3, 32, 32)
    out = model.forward_explain(images)
    tokens = model.encode(images, model.encoder.cls_token)
    top = (
        torch.nn.functional.cosine_similarity(tokens[:, 1:], tokens[:, :1], dim=-1).topk(2).indices
    )
    for b in range(3):
        r, c = top[b] // 4, top[b] % 4
        assert out.boxes[b].tolist() == [
            c.min() * 8,
            r.min() * 8,
            (c.max() + 1) * 8,
            (r.max() + 1) * 8,
        ]


def test_identity_crop_reduces_to_two_passes_of_the_same_image(tiny_backbone):
    model = make(tiny_backbone, top_k=16).eval()  # all tokens: the box is the whole image
    images = torch.randn(2, 3, 32, 32)
    out = model.forward_explain(images)
    assert torch.allclose(out.crops, images, atol=1e-5)
    # the crop CLS starts as a copy of the backbone's, so both views are the same
    assert torch.allclose(out.cls_local, out.cls_global, atol=1e-4)
    with torch.no_grad():
        model.crop_cls_token.add_(
            torch.randn_like(model.crop_cls_token)
        )  # a constant vanishes in LayerNorm
    out2 = model.forward_explain(images)
    assert not torch.allclose(out2.cls_local, out2.cls_global, atol=1e-3)


def test_gradients_reach_crop_cls_and_aggregator_not_box_selection(tiny_backbone):
    model = make(tiny_backbone, top_k=4)
    nn.init.normal_(model.head.weight, std=0.1)  # a zero head would block every gradient
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = model.forward_explain(images)
    assert not out.crops.requires_grad and not out.scores.requires_grad  # selection under no_grad
    out.logits.sum().backward()
    assert model.crop_cls_token.grad is not None and model.crop_cls_token.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.aggregator.parameters())
    assert model.encoder.cls_token.grad.abs().sum() > 0
    # the input gets gradient only through the first (global) pass, not through the crop
    model.zero_grad()
    images.grad = None
    model.encoder.requires_grad_(False)
    out = model.forward_explain(images)
    (out.cls_local.sum()).backward()
    assert images.grad is None or images.grad.abs().sum() == 0


def test_aggregator_off_predicts_with_more_confident_view(tiny_backbone):
    model = make(tiny_backbone, aggregator=False).eval()
    nn.init.normal_(model.head.weight, std=1.0)
    out = model.forward_explain(torch.randn(6, 3, 32, 32))
    conf_g = out.logits_global.softmax(-1).amax(-1)
    conf_l = out.logits_local.softmax(-1).amax(-1)
    for b in range(6):
        want = out.logits_global[b] if conf_g[b] >= conf_l[b] else out.logits_local[b]
        assert torch.equal(out.logits[b], want)
    loss, _ = model.training_loss(
        torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), nn.CrossEntropyLoss()
    )
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize(
    "selector", ["gls", "attention", "rollout", "random", "gls_centred", "gls_random_place"]
)
def test_selectors(tiny_backbone, selector):
    model = make(tiny_backbone, selector=selector, top_k=3).eval()
    out = model.forward_explain(torch.randn(2, 3, 32, 32))
    assert out.scores.shape == (2, 16) and out.logits.shape == (2, 5)


def test_position_controls_crop_the_gls_box_size_elsewhere(tiny_backbone):
    # gls_centred / gls_random_place: each image's GLS box, same width and height (so the
    # same zoom), moved to the centre / a random place; the scores stay the GLS scores
    torch.manual_seed(0)
    gls = make(tiny_backbone, top_k=3).eval()
    images = torch.randn(6, 3, 32, 32)
    ref = gls.forward_explain(images)
    size = ref.boxes[:, 2:] - ref.boxes[:, :2]  # (B, 2) widths, heights
    assert (size < 32).any()  # some box can move at all
    for selector in ("gls_centred", "gls_random_place"):
        model = make(tiny_backbone, top_k=3, selector=selector).eval()
        model.load_state_dict(gls.state_dict())
        torch.manual_seed(1)
        out = model.forward_explain(images)
        assert torch.equal(out.scores, ref.scores)
        assert torch.equal(out.boxes[:, 2:] - out.boxes[:, :2], size), selector
        assert (out.boxes >= 0).all() and (out.boxes <= 32).all(), selector
        if selector == "gls_centred":
            centre2 = out.boxes[:, :2] + out.boxes[:, 2:]  # twice the centre
            assert ((centre2 - 32).abs() <= 1).all()  # centred to the pixel
        else:
            torch.manual_seed(1)
            assert torch.equal(model.forward_explain(images).boxes, out.boxes)  # seeded
            torch.manual_seed(2)
            moved = torch.cat([model.forward_explain(images).boxes for _ in range(5)])
            assert len({tuple(b) for b in moved.tolist()}) > 6  # places vary
        assert not torch.equal(out.boxes, ref.boxes)


def test_min_box_bounds_zoom(tiny_backbone):
    model = make(tiny_backbone, top_k=1, min_box=16).eval()
    out = model.forward_explain(torch.randn(4, 3, 32, 32))
    assert ((out.boxes[:, 2] - out.boxes[:, 0]) >= 16).all() and (
        (out.boxes[:, 3] - out.boxes[:, 1]) >= 16
    ).all()


def test_vit_baseline_and_cls_block_variant(tiny_backbone):
    vit = create_model("vit", num_classes=5, image_size=32, **tiny_backbone)
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert vit.encoder.head.weight.abs().sum() == 0  # zero-initialised head, as GLSim's
    blk = create_model("vit", num_classes=5, image_size=32, **tiny_backbone, cls_block=True)
    assert blk(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert sum(p.numel() for p in blk.parameters()) > sum(p.numel() for p in vit.parameters())


def test_glsim_needs_a_cls_token():
    from timm.models.vision_transformer import VisionTransformer

    enc = VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
        class_token=False,
        global_pool="avg",
    )
    with pytest.raises(ValueError, match="CLS token"):
        GLSim(
            enc, 3, top_k=1, metric="cosine", selector="gls", aggregator=True, min_box=0,
            align_corners=True, aggregator_drop_path=0.0, token_drop=0.0,
        )  # fmt: skip


def test_token_drop_zeroes_the_crop_cls_in_training_only(tiny_backbone):
    """The reference's Dropout1d on the aggregator's non-first tokens: the crop CLS token is
    zeroed whole (not per feature) with probability p in training, kept and scaled 1/(1-p)
    otherwise; identity in eval. Seen through the aggregator's input."""
    model = make(tiny_backbone, token_drop=0.5)
    seen = []
    model.aggregator.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    torch.manual_seed(0)
    images = torch.randn(64, 3, 32, 32)
    out = model.train().forward_explain(images)
    pair = seen[-1]  # (B, 2, D)
    dropped = (pair[:, 1] == 0).all(-1)  # (B,)
    assert 10 < int(dropped.sum()) < 54  # ~ half of 64
    kept = ~dropped
    assert torch.allclose(pair[kept, 1], out.cls_local[kept] * 2, atol=1e-5)  # 1 / (1 - 0.5)
    assert torch.equal(pair[:, 0], out.cls_global)  # the global CLS is never dropped
    model.eval().forward_explain(images)
    assert torch.equal(seen[-1][:, 1], model.forward_explain(images).cls_local)


def test_reference_regularisation_params_reach_the_model():
    from glsim.config import Params
    from glsim.models.glsim import build_glsim

    p = Params().model.glsim  # defaults: the reference code's behaviour
    assert (p.align_corners, p.aggregator_drop_path, p.token_drop) == (True, True, 0.2)
    model = build_glsim(
        num_classes=3, image_size=32, backbone="vit_tiny_patch16_224",
        backbone_overrides={"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2},
        drop_path_rate=0.1, align_corners=True, aggregator_drop_path=True, token_drop=0.2,
    )  # fmt: skip
    assert model.align_corners and model.token_drop.p == 0.2
    assert model.aggregator.drop_path1.drop_prob == pytest.approx(0.1)
    plain = build_glsim(
        num_classes=3, image_size=32, backbone="vit_tiny_patch16_224",
        backbone_overrides={"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2},
        drop_path_rate=0.1, align_corners=False, aggregator_drop_path=False, token_drop=0.0,
    )  # fmt: skip
    assert plain.token_drop is None and isinstance(plain.aggregator.drop_path1, nn.Identity)
