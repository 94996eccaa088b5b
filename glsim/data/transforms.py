"""Train / eval image transforms (albumentations 2.0.8) and the eval box mapping.

Train (paper Sec. 4, AugReg Table 11): resize to an ``int(S * ratio)`` square, random
crop ``S``, horizontal flip, at ``strong`` also TrivialAugmentWide and random erasing, then
ImageNet normalisation. Eval: the same resize, center crop ``S``. The AugReg levels below
``strong`` differ only in the model/loss (label smoothing, stochastic depth), not here.

The pipeline is split where the pixels stop being uint8 (:class:`Preprocess`): a loader
worker runs the albumentations part and ships a uint8 (3, S, S) tensor and the erasing
rectangle it drew; :class:`BatchFinish` normalises and erases whole batches on the device
the model is on. Normalize and Erasing keep their places in the albumentations pipeline
(:class:`DeferredNormalize`, :class:`DeferredErasing`): Erasing draws its rectangle from
the same random stream as before, both leave the pixels alone, and the batch finish gives
the floats albumentations' Normalize and Erasing gave per image, bit for bit.

albumentations 2.0.8 has no TrivialAugment; :class:`TrivialAugmentWide` re-implements
torchvision's ``TrivialAugmentWide`` (Müller & Hutter 2021) as an albumentations transform,
with albumentations' own pixel/geometric functions wherever one exists.
"""

from __future__ import annotations

from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.geometric import functional as fgeometric
from albumentations.augmentations.pixel import functional as fpixel
from albumentations.pytorch import ToTensorV2
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AugReg = Literal["minimal", "weak", "medium", "strong"]

# torchvision.transforms.TrivialAugmentWide._augmentation_space: op -> (magnitudes over
# num_bins, signed). A signed op flips the magnitude's sign with probability 1/2.
TA_WIDE_OPS: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)


def ta_wide_space(num_bins: int = 31) -> dict[str, tuple[np.ndarray, bool]]:
    """The magnitude bins of each TA-wide op, as in torchvision."""
    unit = np.linspace(0.0, 0.99, num_bins)
    return {
        "Identity": (np.zeros(1), False),
        "ShearX": (unit, True),
        "ShearY": (unit, True),
        "TranslateX": (np.linspace(0.0, 32.0, num_bins), True),
        "TranslateY": (np.linspace(0.0, 32.0, num_bins), True),
        "Rotate": (np.linspace(0.0, 135.0, num_bins), True),
        "Brightness": (unit, True),
        "Color": (unit, True),
        "Contrast": (unit, True),
        "Sharpness": (unit, True),
        "Posterize": (8 - np.round(np.arange(num_bins) / ((num_bins - 1) / 6)).astype(int), False),
        "Solarize": (np.linspace(255.0, 0.0, num_bins), False),
        "AutoContrast": (np.zeros(1), False),
        "Equalize": (np.zeros(1), False),
    }


def _warp(img: np.ndarray, matrix: np.ndarray, fill: float) -> np.ndarray:
    # torchvision's TA applies geometric ops with nearest interpolation and a constant fill.
    return fgeometric.warp_affine(
        img, matrix, cv2.INTER_NEAREST, fill, cv2.BORDER_CONSTANT, output_shape=img.shape[:2]
    )


def _sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's ``adjust_sharpness``: blend with a 3x3 smoothed copy, borders kept.

    albumentations' ``Sharpen`` is a different operator (Laplacian-style kernel, alpha
    blending), so this one is written out.
    """
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0
    smooth = np.round(
        cv2.filter2D(img.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT)
    )
    degenerate = img.astype(np.float32)
    degenerate[1:-1, 1:-1] = smooth[1:-1, 1:-1]
    out = factor * img.astype(np.float32) + (1.0 - factor) * degenerate
    return np.clip(out, 0, 255).astype(np.uint8)


def apply_ta_op(img: np.ndarray, op: str, magnitude: float, fill: float = 0) -> np.ndarray:
    """Apply one TA-wide op to a uint8 RGB image (H, W, 3), as torchvision's ``_apply_op``."""
    h, w = img.shape[:2]
    if op == "Identity":
        return img
    # Shears are about the top-left corner (torchvision's center=[0, 0]) in its pixel-centre
    # convention, hence the half-pixel offset.
    if op == "ShearX":
        return _warp(
            img, np.array([[1, -magnitude, -magnitude / 2], [0, 1, 0], [0, 0, 1]], float), fill
        )
    if op == "ShearY":
        return _warp(
            img, np.array([[1, 0, 0], [-magnitude, 1, -magnitude / 2], [0, 0, 1]], float), fill
        )
    if op == "TranslateX":
        return _warp(img, np.array([[1, 0, int(magnitude)], [0, 1, 0], [0, 0, 1]], float), fill)
    if op == "TranslateY":
        return _warp(img, np.array([[1, 0, 0], [0, 1, int(magnitude)], [0, 0, 1]], float), fill)
    if op == "Rotate":  # counter-clockwise for positive angles, about the image center
        matrix = np.vstack(
            [cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), magnitude, 1.0), [0, 0, 1]]
        )
        return _warp(img, matrix, fill)
    if op == "Brightness":
        return np.clip(fpixel.adjust_brightness_torchvision(img, 1.0 + magnitude), 0, 255).astype(
            np.uint8
        )
    if op == "Color":
        return fpixel.adjust_saturation_torchvision(img, 1.0 + magnitude)
    if op == "Contrast":
        return fpixel.adjust_contrast_torchvision(img, 1.0 + magnitude)
    if op == "Sharpness":
        return _sharpness(img, 1.0 + magnitude)
    if op == "Posterize":
        return fpixel.posterize(img, int(magnitude))
    if op == "Solarize":
        return fpixel.solarize(img, magnitude / 255.0)
    if op == "AutoContrast":
        return fpixel.auto_contrast(img, cutoff=0, ignore=None, method="pil")
    if op == "Equalize":
        return fpixel.equalize(img, mode="pil", by_channels=True)
    raise ValueError(f"unknown TrivialAugmentWide op {op!r}; valid: {', '.join(TA_WIDE_OPS)}")


class TrivialAugmentWide(A.ImageOnlyTransform):
    """TrivialAugment, wide magnitudes (Müller & Hutter 2021; torchvision's ``TrivialAugmentWide``).

    Per image: one op uniformly from the 14 of :data:`TA_WIDE_OPS`, one magnitude bin
    uniformly from ``num_bins``, a random sign for signed ops. Draws use the transform's
    ``py_random``, so ``A.Compose(..., seed=...)`` makes it reproducible.

    Args:
        num_bins: Magnitude bins (31 as in the paper and torchvision).
        fill: Pixel value for areas uncovered by geometric ops.
        p: Probability of applying (1.0 as in TrivialAugment).
    """

    def __init__(self, num_bins: int = 31, fill: float = 0, p: float = 1.0):
        super().__init__(p=p)
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.num_bins = num_bins
        self.fill = fill
        self._space = ta_wide_space(num_bins)

    def get_params(self) -> dict[str, Any]:
        op = TA_WIDE_OPS[self.py_random.randrange(len(TA_WIDE_OPS))]
        magnitudes, signed = self._space[op]
        magnitude = float(magnitudes[self.py_random.randrange(len(magnitudes))])
        if signed and self.py_random.random() < 0.5:
            magnitude = -magnitude
        return {"op": op, "magnitude": magnitude}

    def apply(self, img: np.ndarray, op: str, magnitude: float, **params: Any) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"TrivialAugmentWide needs a uint8 RGB image (H, W, 3), got {img.dtype} {img.shape}; "
                "place it before Normalize"
            )
        return apply_ta_op(img, op, magnitude, self.fill)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("num_bins", "fill")


class DeferredNormalize(A.Normalize):
    """albumentations' ``Normalize``, applied later by :class:`BatchFinish`: the image stays uint8.

    It keeps Normalize's place and parameters, so the pipeline reads as before and
    :meth:`table` is albumentations' own arithmetic.
    """

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return img

    def table(self) -> Tensor:
        """float32 (3, 256): what ``Normalize`` makes of each uint8 level of each channel.

        albumentations normalises uint8 images through a per-channel lookup table
        (albucore's ``normalize_lut``); running its own ``apply`` on the 256 levels reads
        that table out, so a gather from it gives the very same floats.
        """
        levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)  # (256, 1, 3)
        values = super().apply(levels)  # (256, 1, 3)
        return torch.from_numpy(np.ascontiguousarray(values[:, 0, :].T))  # (3, 256)


NO_ERASE_BOX = (-1, -1, -1, -1)  # an empty rectangle: no erasing on this sample


class DeferredErasing(A.Erasing):
    """albumentations' ``Erasing`` drawing its rectangle as before, erasing nothing here.

    The rectangle (``x0, y0, x1, y1`` in crop pixels) comes out of the pipeline as
    ``erase_box``; :class:`BatchFinish` fills it with ``fill`` after normalising, where
    ``Erasing`` would fill it. Only a constant ``fill`` can be deferred this way.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.fill, (int, float)):
            raise ValueError(f"DeferredErasing needs a constant fill, got {self.fill!r}")

    def apply(self, img: np.ndarray, holes: np.ndarray, seed: int, **params: Any) -> np.ndarray:
        return img

    def apply_with_params(
        self, params: dict[str, Any], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        out = super().apply_with_params(params, *args, **kwargs)
        holes = params["holes"]  # (0 or 1, 4): Erasing draws at most one rectangle
        if len(holes):
            out["erase_box"] = tuple(int(v) for v in holes[0])
        return out


def lookup_cpu(table: Tensor, images: Tensor) -> Tensor:
    """``table[c][images[:, c]]`` per channel with ``cv2.LUT``, the gather albumentations
    itself does: on a CPU ~20x faster than torch indexing. (3, 256), uint8 (B, 3, H, W)."""
    pixels, lut = images.numpy(), table.numpy()
    out = np.empty(pixels.shape, dtype=np.float32)  # (B, 3, H, W)
    for c in range(3):
        plane = np.ascontiguousarray(pixels[:, c]).reshape(-1, pixels.shape[-1])  # (B * H, W)
        out[:, c] = cv2.LUT(plane, lut[c]).reshape(out[:, c].shape)
    return torch.from_numpy(out)


def lookup_torch(table: Tensor, images: Tensor) -> Tensor:
    """The same gather in torch, on the images' device. (3, 256), uint8 (B, 3, H, W)."""
    offsets = torch.arange(3, device=images.device).view(1, 3, 1, 1) * 256
    return table.flatten()[images.long() + offsets]  # (B, 3, H, W)


class BatchFinish:
    """The float end of the pipeline, per batch: Normalize's table, then erasing.

    ``finish(images, erase_boxes)``: ``images`` uint8 (B, 3, S, S) on any device,
    ``erase_boxes`` int (B, 4) (``x0, y0, x1, y1``, :data:`NO_ERASE_BOX` for none) or None;
    returns float32 (B, 3, S, S) on the images' device.
    """

    def __init__(self, table: Tensor, fill: float = 0.0):
        self.table = table  # (3, 256)
        self.fill = fill
        self._tables: dict[torch.device, Tensor] = {}

    def _table_on(self, device: torch.device) -> Tensor:
        if device not in self._tables:
            self._tables[device] = self.table.to(device)
        return self._tables[device]

    def __call__(self, images: Tensor, erase_boxes: Tensor | None = None) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"BatchFinish needs uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if images.device.type == "cpu":
            out = lookup_cpu(self.table, images)
        else:
            out = lookup_torch(self._table_on(images.device), images)
        if erase_boxes is None:
            return out
        boxes = erase_boxes.to(device=images.device, dtype=torch.long)  # (B, 4)
        h, w = out.shape[-2:]
        rows = torch.arange(h, device=images.device)
        cols = torch.arange(w, device=images.device)
        in_rows = (rows >= boxes[:, 1:2]) & (rows < boxes[:, 3:4])  # (B, H)
        in_cols = (cols >= boxes[:, 0:1]) & (cols < boxes[:, 2:3])  # (B, W)
        mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (B, 1, H, W)
        return out.masked_fill_(mask, self.fill)


class Preprocess:
    """A model's preprocessing, split for a loader: :attr:`worker` then :attr:`finish`.

    ``worker`` (an ``A.Compose``) maps uint8 RGB (H, W, 3) to ``{"image": uint8 (3, S, S),
    "erase_box": ...}``; :meth:`sample` gives that as tensors. ``finish`` normalises and
    erases a batch. Called like an ``A.Compose`` (``preprocess(image=...)["image"]``) it
    runs both on one image and returns float32 (3, S, S).
    """

    def __init__(self, worker: A.Compose, finish: BatchFinish):
        self.worker, self.finish = worker, finish

    @property
    def transforms(self) -> list[Any]:
        return list(self.worker.transforms)

    def set_random_seed(self, seed: int | None) -> None:
        self.worker.set_random_seed(seed)

    def sample(self, pixels: np.ndarray) -> tuple[Tensor, Tensor]:
        """uint8 (H, W, 3) -> (uint8 (3, S, S), int16 (4,) erasing rectangle)."""
        out = self.worker(image=pixels)
        return out["image"], torch.tensor(out.get("erase_box", NO_ERASE_BOX), dtype=torch.int16)

    def __call__(self, *, image: np.ndarray) -> dict[str, Tensor]:
        pixels, erase_box = self.sample(image)
        return {"image": self.finish(pixels[None], erase_box[None])[0]}


def build_transforms(
    *,
    image_size: int,
    resize_ratio: float = 1.34,
    train: bool,
    augreg: AugReg = "strong",
    erasing_prob: float = 0.3,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    seed: int | None = None,
) -> Preprocess:
    """The train or eval preprocessing: uint8 RGB (H, W, 3) -> float32 tensor (3, S, S).

    Args:
        image_size: S, the model input side.
        resize_ratio: Resize to an ``int(S * resize_ratio)`` square before cropping.
        train: Random crop + flip (+ ``strong`` extras) if True, else center crop.
        augreg: AugReg level; only ``strong`` changes the pipeline (TrivialAugmentWide +
            random erasing with probability ``erasing_prob``).
        erasing_prob: Probability of random erasing at ``strong``.
        mean: Normalisation mean (of pixel values scaled to [0, 1]).
        std: Normalisation std.
        seed: Seed of the albumentations pipeline (the loader reseeds it per epoch/worker).
    """
    if augreg not in ("minimal", "weak", "medium", "strong"):
        raise ValueError(f"augreg must be minimal, weak, medium or strong, got {augreg!r}")
    resized = int(image_size * resize_ratio)
    if resized < image_size:
        raise ValueError(
            f"resize_ratio must be >= 1 (resize {resized} < crop {image_size}), got {resize_ratio}"
        )
    steps: list[Any] = [A.Resize(resized, resized, area_for_downscale="image")]
    if train:
        steps += [A.RandomCrop(image_size, image_size), A.HorizontalFlip(p=0.5)]
        if augreg == "strong":
            steps.append(TrivialAugmentWide())
    else:
        steps.append(A.CenterCrop(image_size, image_size))
    normalize = DeferredNormalize(mean=mean, std=std, max_pixel_value=255.0)
    steps.append(normalize)
    if train and augreg == "strong" and erasing_prob > 0:
        # After normalisation, as torchvision/timm RandomErasing: fill 0 is the mean colour.
        steps.append(DeferredErasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), fill=0, p=erasing_prob))
    steps.append(ToTensorV2())
    return Preprocess(A.Compose(steps, seed=seed), BatchFinish(normalize.table(), fill=0.0))


def eval_box_transform(
    box: np.ndarray | tuple[float, float, float, float],
    orig_size: np.ndarray | tuple[int, int],
    *,
    image_size: int,
    resize_ratio: float = 1.34,
) -> np.ndarray:
    """Map boxes in original image pixels to model-input pixels under the eval transform.

    The eval transform resizes (W, H) to an ``R = int(S * ratio)`` square, then crops the
    center ``S x S`` starting at ``(R - S) // 2`` (albumentations' ``CenterCrop``). The
    result is clipped to ``[0, S]``.

    Args:
        box: ``(..., 4)`` as ``x0, y0, x1, y1``.
        orig_size: ``(..., 2)`` as ``(width, height)``, broadcast against ``box``.
        image_size: S.
        resize_ratio: The eval transform's resize ratio.

    Returns:
        float ``(..., 4)`` boxes in the ``S x S`` model input.
    """
    box = np.asarray(box, dtype=np.float64)
    size = np.asarray(orig_size, dtype=np.float64)
    if box.shape[-1] != 4 or size.shape[-1] != 2:
        raise ValueError(
            f"box must be (..., 4) and orig_size (..., 2), got {box.shape} and {size.shape}"
        )
    resized = int(image_size * resize_ratio)
    offset = (resized - image_size) // 2
    scale = np.concatenate([resized / size, resized / size], axis=-1)  # (..., 4): sx, sy, sx, sy
    return np.clip(box * scale - offset, 0.0, float(image_size))
