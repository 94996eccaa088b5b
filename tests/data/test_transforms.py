"""Transforms: shapes, normalisation, TrivialAugmentWide, eval box mapping."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from glsim.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NO_ERASE_BOX,
    TA_WIDE_OPS,
    TrivialAugmentWide,
    apply_ta_op,
    build_transforms,
    eval_box_transform,
    lookup_cpu,
    lookup_torch,
    ta_wide_space,
)


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)


@pytest.mark.parametrize("augreg", ["minimal", "weak", "medium", "strong"])
@pytest.mark.parametrize("train", [True, False])
def test_output_is_a_float_chw_tensor(image: np.ndarray, augreg: str, train: bool) -> None:
    out = build_transforms(image_size=16, train=train, augreg=augreg, seed=0)(image=image)["image"]
    assert isinstance(out, torch.Tensor)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32


def test_eval_normalises_with_mean_and_std() -> None:
    flat = np.full((50, 70, 3), (51, 102, 204), dtype=np.uint8)
    out = build_transforms(image_size=16, train=False, augreg="strong")(image=flat)["image"]
    expected = (np.array([51, 102, 204]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out.std(dim=(1, 2)).numpy(), 0, atol=1e-6)


def test_eval_is_deterministic_and_is_resize_then_center_crop(image: np.ndarray) -> None:
    t = build_transforms(image_size=16, train=False, augreg="strong")
    assert torch.equal(t(image=image)["image"], t(image=image)["image"])
    names = [type(s).__name__ for s in t.transforms]
    assert names == ["Resize", "CenterCrop", "DeferredNormalize", "ToTensorV2"]
    assert (t.transforms[0].height, t.transforms[0].width) == (21, 21)  # int(16 * 1.34)


def test_only_strong_adds_trivial_augment_and_erasing() -> None:
    for level in ("minimal", "weak", "medium"):
        names = [
            type(s).__name__
            for s in build_transforms(image_size=16, train=True, augreg=level).transforms
        ]
        assert names == [
            "Resize",
            "RandomCrop",
            "HorizontalFlip",
            "DeferredNormalize",
            "ToTensorV2",
        ]
    strong = build_transforms(image_size=16, train=True, augreg="strong", erasing_prob=0.25)
    names = [type(s).__name__ for s in strong.transforms]
    assert names == [
        "Resize",
        "RandomCrop",
        "HorizontalFlip",
        "TrivialAugmentWide",
        "DeferredNormalize",
        "DeferredErasing",
        "ToTensorV2",
    ]
    assert strong.transforms[5].p == 0.25


def _per_image_pipeline(
    *, image_size: int, train: bool, erasing_prob: float = 0.3, seed: int | None = None
) -> A.Compose:
    """The whole pipeline in albumentations, Normalize and Erasing included, per image."""
    resized = int(image_size * 1.34)
    steps: list = [A.Resize(resized, resized, area_for_downscale="image")]
    if train:
        steps += [A.RandomCrop(image_size, image_size), A.HorizontalFlip(p=0.5)]
        steps.append(TrivialAugmentWide())
    else:
        steps.append(A.CenterCrop(image_size, image_size))
    steps.append(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0))
    if train and erasing_prob > 0:
        steps.append(A.Erasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), fill=0, p=erasing_prob))
    steps.append(ToTensorV2())
    return A.Compose(steps, seed=seed)


def _images(count: int) -> list[np.ndarray]:
    """Noise and smooth gradients of several sizes and aspect ratios."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(count):
        h, w = 40 + 7 * (i % 5), 30 + 11 * (i % 4)
        if i % 2:
            out.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        else:
            ramp = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
            out.append((ramp * rng.uniform(0.3, 1, 3)).astype(np.uint8))
    return out


@pytest.mark.parametrize("seed", [0, 1, 5])
@pytest.mark.parametrize(("train", "erasing_prob"), [(True, 1.0), (True, 0.3), (False, 0.0)])
def test_deferred_finish_is_bit_identical_to_the_per_image_pipeline(
    seed: int, train: bool, erasing_prob: float
) -> None:
    """uint8 in the worker, Normalize's table and erasing per batch: the same floats."""
    reference = _per_image_pipeline(
        image_size=24, train=train, erasing_prob=erasing_prob, seed=seed
    )
    split = build_transforms(
        image_size=24, train=train, augreg="strong", erasing_prob=erasing_prob, seed=seed
    )
    images = _images(12)
    expected = torch.stack([reference(image=im)["image"] for im in images])
    pixels, boxes = zip(*(split.sample(im) for im in images), strict=True)
    assert all(p.dtype == torch.uint8 for p in pixels)
    got = split.finish(torch.stack(pixels), torch.stack(boxes))
    assert got.dtype == expected.dtype and torch.equal(got, expected)
    erased = [tuple(b) != NO_ERASE_BOX for b in torch.stack(boxes).tolist()]
    assert any(erased) if erasing_prob == 1.0 else train or not any(erased)


def test_erasing_rate_and_channel_means_match_the_per_image_pipeline() -> None:
    """Over 200 samples: the same erased samples and per-channel means, exactly."""
    reference = _per_image_pipeline(image_size=24, train=True, erasing_prob=0.3, seed=11)
    split = build_transforms(image_size=24, train=True, augreg="strong", seed=11)
    images = _images(200)
    old = torch.stack([reference(image=im)["image"] for im in images])
    pixels, boxes = zip(*(split.sample(im) for im in images), strict=True)
    new = split.finish(torch.stack(pixels), torch.stack(boxes))
    # Normalised pixels are never exactly 0 (0.485 * 255 is no integer): a 0 is an erased one.
    old_erased = (old == 0).flatten(1).any(1)
    new_erased = torch.stack(boxes)[:, 0] >= 0
    assert torch.equal(old_erased, new_erased) and 0.2 < new_erased.float().mean() < 0.4
    assert torch.equal(old.mean(dim=(0, 2, 3)), new.mean(dim=(0, 2, 3)))


def test_the_cpu_and_device_lookups_agree() -> None:
    """The device path's torch gather, run here on the CPU, equals the CPU path's cv2.LUT."""
    table = build_transforms(image_size=8, train=False).finish.table
    images = torch.randint(0, 256, (3, 3, 7, 5), dtype=torch.uint8)
    assert torch.equal(lookup_cpu(table, images), lookup_torch(table, images))


def test_train_pipeline_is_reproducible_under_its_seed(image: np.ndarray) -> None:
    def run(seed: int) -> list[torch.Tensor]:
        t = build_transforms(image_size=16, train=True, augreg="strong", seed=seed)
        return [t(image=image)["image"] for _ in range(10)]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_trivial_augment_draws_are_reproducible_and_cover_the_space() -> None:
    def draws(seed: int) -> list[tuple[str, float]]:
        ta = A.Compose([TrivialAugmentWide()], seed=seed).transforms[0]
        return [tuple(ta.get_params().values()) for _ in range(3000)]

    a = draws(0)
    assert a == draws(0) and a != draws(1)
    assert {op for op, _ in a} == set(TA_WIDE_OPS)
    space = ta_wide_space(31)
    for op, magnitude in a:
        magnitudes, signed = space[op]
        assert np.isclose(np.abs(magnitudes), abs(magnitude)).any(), (op, magnitude)
        assert signed or magnitude >= 0
    rotations = [m for op, m in a if op == "Rotate"]
    assert min(rotations) < 0 < max(rotations) and max(map(abs, rotations)) <= 135


def test_trivial_augment_space_matches_torchvision() -> None:
    from torchvision.transforms import TrivialAugmentWide as TorchvisionTA

    reference = TorchvisionTA()._augmentation_space(31)
    ours = ta_wide_space(31)
    assert list(ours) == list(reference) == list(TA_WIDE_OPS)
    for op, (magnitudes, signed) in reference.items():
        assert ours[op][1] == signed, op
        np.testing.assert_allclose(
            ours[op][0], np.atleast_1d(magnitudes.numpy()), atol=1e-6, err_msg=op
        )


@pytest.mark.parametrize("op", TA_WIDE_OPS)
def test_every_op_keeps_shape_and_dtype_at_every_magnitude(image: np.ndarray, op: str) -> None:
    magnitudes, signed = ta_wide_space()[op]
    for magnitude in [*magnitudes, *(-magnitudes if signed else [])]:
        out = apply_ta_op(image, op, float(magnitude))
        assert out.shape == image.shape and out.dtype == np.uint8


@pytest.mark.parametrize("op", TA_WIDE_OPS)
def test_every_op_matches_torchvision(image: np.ndarray, op: str) -> None:
    """Same pixels as torchvision's op up to rounding (equalize: PIL's variant, within 3)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.autoaugment import _apply_op

    tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    magnitudes, signed = ta_wide_space()[op]
    magnitudes = magnitudes[::6]  # 0, 6, ..., 30: a spread of bins keeps the test quick
    for magnitude in [*magnitudes, *(-magnitudes if signed else [])]:
        reference = _apply_op(tensor, op, float(magnitude), InterpolationMode.NEAREST, None)
        diff = np.abs(
            apply_ta_op(image, op, float(magnitude)).astype(int)
            - reference.permute(1, 2, 0).numpy()
        )
        assert (diff > 3).mean() < 0.01, (op, magnitude)


def test_ops_on_hand_checked_cases(image: np.ndarray) -> None:
    assert np.array_equal(apply_ta_op(image, "Identity", 0.0), image)
    assert np.array_equal(apply_ta_op(image, "Solarize", 0.0), 255 - image)
    assert np.array_equal(apply_ta_op(image, "Posterize", 4.0), image & 0xF0)
    shifted = apply_ta_op(image, "TranslateX", 5.0)
    assert np.array_equal(shifted[:, 5:], image[:, :-5]) and not shifted[:, :5].any()
    assert np.array_equal(apply_ta_op(image, "Brightness", -0.99 + 0.99), image)
    assert np.array_equal(apply_ta_op(image, "Color", -1.0), apply_ta_op(image, "Color", -1.0))
    gray = apply_ta_op(image, "Color", -1.0)  # factor 0: grayscale
    assert np.array_equal(gray[..., 0], gray[..., 1])


def test_trivial_augment_rejects_normalised_input() -> None:
    t = A.Compose([TrivialAugmentWide()], seed=0)
    with pytest.raises(ValueError, match="uint8 RGB"):
        t(image=np.zeros((8, 8, 3), np.float32))


def test_eval_box_transform_on_hand_worked_numbers() -> None:
    # (W, H) = (200, 100), S = 64, R = int(64 * 1.34) = 85, offset (85 - 64) // 2 = 10:
    # x * 85/200 - 10 and y * 85/100 - 10.
    out = eval_box_transform((50, 25, 150, 75), (200, 100), image_size=64, resize_ratio=1.34)
    np.testing.assert_allclose(out, [11.25, 11.25, 53.75, 53.75])


def test_eval_box_transform_is_vectorised_and_clips_to_the_crop() -> None:
    boxes = np.array([[0, 0, 200, 100], [50, 25, 150, 75]], dtype=float)
    sizes = np.array([[200, 100], [200, 100]])
    out = eval_box_transform(boxes, sizes, image_size=64)
    np.testing.assert_allclose(out, [[0, 0, 64, 64], [11.25, 11.25, 53.75, 53.75]])
    with pytest.raises(ValueError, match="must be"):
        eval_box_transform([1, 2, 3], (10, 10), image_size=8)


def test_eval_box_transform_agrees_with_the_eval_pipeline() -> None:
    """A white box drawn on a black image lands where the mapping says."""
    canvas = np.zeros((120, 180, 3), dtype=np.uint8)
    canvas[30:90, 45:135] = 255
    t = build_transforms(
        image_size=32, train=False, augreg="minimal", mean=(0, 0, 0), std=(1, 1, 1)
    )
    bright = t(image=canvas)["image"][0] > 0.5
    rows, cols = np.nonzero(bright.numpy())
    x0, y0, x1, y1 = eval_box_transform((45, 30, 135, 90), (180, 120), image_size=32)
    assert abs(cols.min() - x0) <= 1 and abs(cols.max() + 1 - x1) <= 1
    assert abs(rows.min() - y0) <= 1 and abs(rows.max() + 1 - y1) <= 1


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="augreg"):
        build_transforms(image_size=16, train=True, augreg="extreme")
    with pytest.raises(ValueError, match="resize_ratio"):
        build_transforms(image_size=16, train=True, resize_ratio=0.5)
