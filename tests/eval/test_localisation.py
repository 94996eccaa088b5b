"""glsim/eval/localisation.py: the pointing-game hit test, hit rates against the shuffled
baseline, zoom and IoU, on boxes worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from glsim.eval.localisation import centre_inside, hit_rates
from glsim.models.backbone import create_vit
from glsim.models.gls import crop_boxes, global_local_similarity, vit_gls_boxes

# Boxes are (x0, y0, x1, y1), half-open, in a 32 x 32 input.
BOXES = torch.tensor(
    [
        [0, 0, 16, 16],  # b0
        [16, 16, 32, 32],  # b1
        [0, 16, 32, 32],  # b2 (32 wide, 16 high)
        [8, 8, 24, 24],  # b3
    ]
)
TARGETS = torch.tensor(
    [
        [4, 4, 12, 12],  # centre (8, 8) in b0: hit; IoU 64 / 256 = 0.25
        [0, 0, 8, 8],  # centre (4, 4) not in b1: miss; IoU 0
        [8, 20, 24, 28],  # centre (16, 24) in b2: hit; IoU 128 / 512 = 0.25
        [16, 0, 32, 16],  # centre (24, 8) on b3's right edge x1 = 24: miss; IoU 64 / 448
    ],
    dtype=torch.float32,
)


def test_centre_inside_hand_worked():
    assert centre_inside(BOXES, TARGETS).tolist() == [True, False, True, False]


@pytest.mark.parametrize(
    ("box", "target", "inside"),
    [
        ([2, 2, 3, 3], [0, 0, 5, 5], True),  # centre (2.5, 2.5) inside [2, 3)
        ([0, 0, 2, 2], [0, 0, 5, 5], False),  # centre 2.5 >= x1 = 2
        ([4, 4, 8, 8], [0, 0, 8, 8], True),  # centre (4, 4) on the left/top edge: inside
        ([0, 0, 4, 8], [0, 0, 8, 8], False),  # centre x = 4 on the right edge: outside
        ([0, 0, 8, 4], [0, 0, 8, 8], False),  # centre y = 4 on the bottom edge: outside
        ([0, 0, 32, 32], [30, 1, 31, 2], True),
    ],
)
def test_centre_inside_edges(box, target, inside):
    assert centre_inside(torch.tensor([box]), torch.tensor([target])).tolist() == [inside]


def test_centre_inside_integer_targets_use_true_centre():
    # integer target (0, 0, 5, 5): centre 2.5 (true division), outside [0, 2), inside [0, 3)
    assert centre_inside(torch.tensor([[0, 0, 2, 2]]), torch.tensor([[0, 0, 5, 5]])).tolist() == [
        False
    ]
    assert centre_inside(torch.tensor([[0, 0, 3, 3]]), torch.tensor([[0, 0, 5, 5]])).tolist() == [
        True
    ]


def test_hit_rates_hand_worked():
    rates = hit_rates(BOXES, TARGETS, image_size=32)
    assert rates["hit_rate"] == pytest.approx(50.0)
    # shuffled = boxes rolled by one: [b3, b0, b1, b2] against targets 0..3:
    # (8, 8) in b3 hit; (4, 4) in b0 hit; (16, 24) in b1 hit; (24, 8) in b2 (y from 16) miss
    assert rates["hit_rate_shuffled"] == pytest.approx(75.0)
    # zoom = S / sqrt(area): 2, 2, 32 / sqrt(512), 2
    assert rates["zoom"] == pytest.approx((6 + 32 / math.sqrt(512)) / 4)
    assert rates["iou"] == pytest.approx((0.25 + 0.0 + 0.25 + 64 / 448) / 4)


def test_hit_rates_perfect_boxes():
    boxes = torch.tensor([[0, 0, 8, 8], [8, 8, 32, 32]])
    rates = hit_rates(boxes, boxes.float(), image_size=32)
    assert rates["hit_rate"] == 100.0
    assert rates["iou"] == pytest.approx(1.0)
    assert rates["zoom"] == pytest.approx((4 + 32 / 24) / 2)
    # shuffled: (4, 4) not in [8, 32); (20, 20) not in [0, 8)
    assert rates["hit_rate_shuffled"] == 0.0


def test_hit_rates_full_image_boxes_always_hit():
    boxes = torch.tensor([[0, 0, 32, 32]] * 3)
    targets = torch.tensor([[0, 0, 4, 4], [28, 28, 32, 32], [10, 10, 20, 20]], dtype=torch.float32)
    rates = hit_rates(boxes, targets, image_size=32)
    assert rates["hit_rate"] == rates["hit_rate_shuffled"] == 100.0
    assert rates["zoom"] == pytest.approx(1.0)
    assert rates["iou"] == pytest.approx((16 / 1024 + 16 / 1024 + 100 / 1024) / 3)


def test_hit_rates_accept_float_targets_with_fractions():
    boxes = torch.tensor([[0, 0, 10, 10]])
    targets = torch.tensor([[2.5, 2.5, 7.5, 7.5]])
    rates = hit_rates(boxes, targets, image_size=10)
    assert rates["iou"] == pytest.approx(25 / 100)
    assert rates["hit_rate"] == 100.0


def _tiny_vit(**extra):
    torch.manual_seed(0)
    return create_vit(
        "vit_tiny_patch16_224", image_size=32, num_classes=0, weights=None,
        patch_size=8, embed_dim=64, depth=2, num_heads=2, **extra,
    ).eval()  # fmt: skip


def _expected_boxes(vit, images, top_k):
    tokens = vit.forward_features(images)  # (B, prefix + N, D)
    cls_and_patches = torch.cat(
        [tokens[:, :1], tokens[:, vit.num_prefix_tokens :]], dim=1
    )  # (B, 1+N, D)
    scores = global_local_similarity(cls_and_patches)
    return crop_boxes(scores, grid_size=4, patch_size=8, top_k=top_k)


def test_vit_gls_boxes_match_crop_boxes_of_cls_similarity():
    vit = _tiny_vit()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        boxes = vit_gls_boxes(vit, images, top_k=4)
        expected = _expected_boxes(vit, images, 4)
    assert boxes.shape == (3, 4) and boxes.dtype == torch.int64
    assert torch.equal(boxes, expected)


def test_vit_gls_boxes_with_register_tokens_use_cls():
    vit = _tiny_vit(reg_tokens=2)
    assert vit.num_prefix_tokens == 3
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vit_gls_boxes(vit, images, top_k=4), _expected_boxes(vit, images, 4))


def test_controls_keep_box_sizes_and_stay_in_the_image():
    from glsim.eval.localisation import control_boxes

    boxes = torch.tensor([[0, 0, 8, 8], [8, 8, 32, 32], [4, 10, 14, 30], [20, 0, 32, 12]])
    for name, control in control_boxes(boxes, 32).items():
        assert torch.equal(control[:, 2] - control[:, 0], (boxes[:, 2] - boxes[:, 0]).roll(
            1 if name == "shuffled" else 0))
        assert torch.equal(control[:, 3] - control[:, 1], (boxes[:, 3] - boxes[:, 1]).roll(
            1 if name == "shuffled" else 0))
        assert (control >= 0).all() and (control <= 32).all(), name
    centred = control_boxes(boxes, 32)["centred"]
    assert centred[0].tolist() == [12, 12, 20, 20] and centred[1].tolist() == [4, 4, 28, 28]
    again = control_boxes(boxes, 32)["random"]
    assert torch.equal(again, control_boxes(boxes, 32)["random"])  # seeded


def test_object_share_and_the_controls_hand_worked():
    # an object in the top-left corner, the box on it: the centred box of the same size
    # misses it; the share is the object's fraction inside the crop
    boxes = torch.tensor([[0, 0, 8, 8]])
    targets = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    rates = hit_rates(boxes, targets, image_size=32)
    assert rates["object_share"] == 1.0 and rates["iou"] == pytest.approx(16 / 64)
    assert rates["hit_rate_centred"] == 0.0 and rates["iou_centred"] == 0.0
    assert rates["object_share_centred"] == 0.0
    assert {"hit_rate_random", "iou_random", "object_share_random", "iou_shuffled"} <= set(rates)


def test_pointing_game_and_its_controls():
    from glsim.eval.localisation import pointing, top_token_centres

    targets = torch.tensor([[0.0, 0.0, 8.0, 8.0], [24.0, 24.0, 32.0, 32.0]])
    points = torch.tensor([[4.0, 4.0], [28.0, 28.0]])
    rates = pointing(points, targets, image_size=32)
    assert rates["pointing"] == 100.0 and rates["pointing_shuffled"] == 0.0
    assert rates["pointing_centred"] == 0.0  # (16, 16) is in neither object
    assert 0.0 <= rates["pointing_random"] <= 100.0

    class Embed:  # a 4x4 grid of 8-px patches
        grid_size, patch_size = (4, 4), (8, 8)
        proj = type("P", (), {"stride": (8, 8)})()

    vit = type("V", (), {"patch_embed": Embed()})()
    scores = torch.zeros(2, 16)
    scores[0, 0], scores[1, 15] = 1.0, 1.0  # top-left and bottom-right tokens
    assert top_token_centres(vit, scores).tolist() == [[4.0, 4.0], [28.0, 28.0]]
