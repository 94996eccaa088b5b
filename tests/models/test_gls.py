import pytest
import torch
import torch.nn.functional as F

from glsim.models.gls import (
    crop_and_resize,
    crop_boxes,
    enlarge_boxes,
    global_local_similarity,
    gls_flops,
)


def one_hot_scores(
    grid: tuple[int, int], hot: list[tuple[int, int]], batch: int = 1
) -> torch.Tensor:
    rows, cols = grid
    s = torch.zeros(batch, rows * cols)
    for rank, (r, c) in enumerate(hot):
        s[:, r * cols + c] = 10.0 - rank
    return s


def test_gls_cosine_matches_definition():
    tokens = torch.randn(3, 1 + 16, 8)
    scores = global_local_similarity(tokens)
    cls = tokens[:, 0]
    for b in range(3):
        for i in range(16):
            expected = torch.dot(cls[b], tokens[b, 1 + i]) / (
                cls[b].norm() * tokens[b, 1 + i].norm()
            )
            assert scores[b, i] == pytest.approx(expected.item(), abs=1e-5)
    assert scores.shape == (3, 16)


def test_gls_token_equal_to_cls_scores_highest_for_every_metric():
    tokens = torch.randn(2, 1 + 9, 16)
    tokens[:, 5] = tokens[:, 0] * 1.0  # patch 4 equals CLS
    for metric in ("cosine", "l1", "l2"):
        scores = global_local_similarity(tokens, metric)
        assert scores.argmax(-1).tolist() == [4, 4], metric
    l1 = global_local_similarity(tokens, "l1")
    assert torch.allclose(l1[:, 0], -(tokens[:, 1] - tokens[:, 0]).abs().mean(-1))


def test_gls_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown similarity metric"):
        global_local_similarity(torch.randn(1, 3, 4), "dot")
    with pytest.raises(ValueError, match="B, 1\\+N, D"):
        global_local_similarity(torch.randn(1, 1, 4))


@pytest.mark.parametrize(
    ("grid", "hot", "patch", "expected"),
    [
        ((4, 4), [(0, 0)], 8, [0, 0, 8, 8]),  # one token, top-left corner
        ((4, 4), [(3, 3)], 8, [24, 24, 32, 32]),  # bottom-right corner, last row/col included
        ((4, 4), [(1, 2), (2, 1)], 8, [8, 8, 24, 24]),  # encloses both
        ((4, 4), [(0, 3), (3, 0)], 16, [0, 0, 64, 64]),  # opposite corners: the whole image
        ((2, 3), [(1, 2), (0, 1)], 10, [10, 0, 30, 20]),  # non-square grid: x = column
        ((3, 2), [(2, 0)], 4, [0, 8, 4, 12]),
    ],
)
def test_crop_boxes_hand_worked(grid, hot, patch, expected):
    boxes = crop_boxes(one_hot_scores(grid, hot), grid_size=grid, patch_size=patch, top_k=len(hot))
    assert boxes.dtype == torch.int64
    assert boxes.tolist() == [expected]


def test_crop_boxes_all_tokens_is_whole_image_and_batched():
    scores = torch.randn(5, 12)
    boxes = crop_boxes(scores, grid_size=(3, 4), patch_size=(8, 8), top_k=12)
    assert boxes.tolist() == [[0, 0, 32, 24]] * 5


def test_crop_boxes_errors():
    with pytest.raises(ValueError, match="top_k"):
        crop_boxes(torch.randn(1, 4), grid_size=2, patch_size=8, top_k=5)
    with pytest.raises(ValueError, match="scores must be"):
        crop_boxes(torch.randn(1, 5), grid_size=2, patch_size=8, top_k=1)


@pytest.mark.parametrize("align_corners", [False, True])
def test_crop_and_resize_equals_per_sample_interpolate(align_corners):
    """Both conventions: half-pixel centres, and the reference code's F.upsample_bilinear
    (align_corners=True), which differ from each other inside the crop."""
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32)
    boxes = torch.tensor([[0, 0, 32, 32], [8, 4, 24, 20], [5, 0, 12, 32]])
    crops = crop_and_resize(images, boxes, (32, 32), align_corners=align_corners)
    for b, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        patch = images[b : b + 1, :, y0:y1, x0:x1]
        ref = F.interpolate(patch, size=(32, 32), mode="bilinear", align_corners=align_corners)
        assert torch.allclose(crops[b], ref[0], atol=1e-5), b
        if align_corners:  # the reference's name for it
            assert torch.allclose(crops[b], F.upsample_bilinear(patch, size=(32, 32))[0], atol=1e-5)
    other = crop_and_resize(images, boxes, (32, 32), align_corners=not align_corners)
    assert not torch.allclose(crops[1], other[1], atol=1e-3)  # the conventions differ


def test_crop_is_the_enclosed_region_only():
    images = torch.zeros(1, 3, 16, 16)
    images[..., 4:8, 8:12] = 1.0  # a bright square at rows 4-7, cols 8-11
    crops = crop_and_resize(images, torch.tensor([[8, 4, 12, 8]]), (16, 16))
    assert torch.allclose(crops, torch.ones_like(crops))  # nothing from outside the box


def test_identity_box_returns_the_image():
    images = torch.rand(2, 3, 24, 24)
    crops = crop_and_resize(images, torch.tensor([[0, 0, 24, 24]] * 2), 24)
    assert torch.allclose(crops, images, atol=1e-5)


def test_enlarge_boxes_keeps_inside_image():
    boxes = torch.tensor([[0, 0, 8, 8], [28, 28, 32, 32], [10, 10, 30, 30]])
    out = enlarge_boxes(boxes, min_size=16, image_size=(32, 32))
    assert out.tolist() == [[0, 0, 16, 16], [16, 16, 32, 32], [10, 10, 30, 30]]
    assert torch.equal(enlarge_boxes(boxes, min_size=0, image_size=(32, 32)), boxes)


def test_gls_flops_formula_matches_table1_at_224():
    # ViT B-16 at 224: N = 196, D = 768 -> 0.45 MFLOPs (Table 1)
    assert gls_flops(196, 768) / 1e6 == pytest.approx(0.45, abs=0.005)


def test_crop_boxes_with_overlapping_patches_use_the_stride():
    # TransFG-style grid: 5 x 5 patches of P = 8 every s = 6 px over 32 px
    scores = one_hot_scores((5, 5), [(0, 0), (1, 2)])
    assert crop_boxes(scores, grid_size=5, patch_size=8, stride=6, top_k=2).tolist() == [
        [0, 0, 2 * 6 + 8, 1 * 6 + 8]
    ]
    last = one_hot_scores((5, 5), [(4, 4)])
    assert crop_boxes(last, grid_size=5, patch_size=8, stride=6, top_k=1).tolist() == [
        [24, 24, 32, 32]
    ]
    same = crop_boxes(scores, grid_size=5, patch_size=8, top_k=2)
    assert torch.equal(same, crop_boxes(scores, grid_size=5, patch_size=8, stride=8, top_k=2))
