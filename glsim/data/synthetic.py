"""Generated images: the built-in fine-grained dataset and the upstream pretraining task.

Both are deterministic from a seed and need no download.

* ``synthetic_fg`` (fine-grained): every image holds one small *target* (a grey square
  with a dark outline, random position and scale) among coloured distractor shapes on a
  textured background. Classes differ only in a detail at the target's centre: by default
  the hue of a small spot (``detail: colour``), a few pixels wide, well under one ViT patch
  in the full image but about a patch once the target is cropped and resized, so finding
  and zooming into the object matters, as in real fine-grained data (a bird's wing bar).
  ``detail: pattern`` uses 3x3 dot markings instead (symmetric under the training flip,
  none a rotation of another), which the small CPU ViTs here could not learn (BENCHMARKS.md).
  The manifest adds the target's box (``x0,y0,x1,y1``) so that localisation can be measured.
* the upstream task (stand-in for ImageNet-21k): many coarse categories (shape x colour
  family) at random positions and scales among small clutter, generated on the fly.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from glsim.config import ExpectedCounts, SyntheticParams
from glsim.data.manifest import write_manifest
from glsim.data.registry import register_dataset

SHAPES = ("circle", "triangle", "cross", "ring", "diamond", "bar", "square", "star")
HUES = (0, 30, 60, 100, 130, 160)  # OpenCV hue (0-180): red, yellow, ..., magenta


# ---------------------------------------------------------------------------------------
# drawing primitives


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour field plus fine noise: (size, size, 3) uint8."""
    coarse = rng.integers(40, 215, size=(4, 4, 3)).astype(np.float32)
    img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 10, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _colour(
    rng: np.random.Generator, hue: float | None = None, jitter: float = 6
) -> tuple[int, int, int]:
    h = float(rng.uniform(0, 180)) if hue is None else (hue + rng.uniform(-jitter, jitter)) % 180
    hsv = np.uint8([[[h, rng.integers(150, 256), rng.integers(150, 256)]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _draw_shape(
    img: np.ndarray, shape: str, cx: float, cy: float, size: float, colour, rng
) -> None:
    r = size / 2
    c = (int(round(cx)), int(round(cy)))
    if shape == "circle":
        cv2.circle(img, c, int(r), colour, -1, cv2.LINE_AA)
    elif shape == "ring":
        cv2.circle(img, c, int(r), colour, max(2, int(r / 3)), cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(img, (int(cx - r), int(cy - r)), (int(cx + r), int(cy + r)), colour, -1)
    elif shape == "bar":
        cv2.rectangle(
            img, (int(cx - r), int(cy - r / 3)), (int(cx + r), int(cy + r / 3)), colour, -1
        )
    elif shape == "cross":
        t = max(1, int(r / 3))
        cv2.rectangle(img, (int(cx - r), int(cy - t)), (int(cx + r), int(cy + t)), colour, -1)
        cv2.rectangle(img, (int(cx - t), int(cy - r)), (int(cx + t), int(cy + r)), colour, -1)
    else:
        if shape == "triangle":
            pts = [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)]
        elif shape == "diamond":
            pts = [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
        elif shape == "star":
            ang = np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1]
            rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
            pts = list(zip(cx + rad * np.cos(ang), cy + rad * np.sin(ang), strict=True))
        else:
            raise ValueError(f"unknown shape {shape!r}")
        cv2.fillPoly(img, [np.round(np.array(pts)).astype(np.int32)], colour, cv2.LINE_AA)


# ---------------------------------------------------------------------------------------
# the fine-grained markings


def markings(num_classes: int, distance: int = 2) -> list[np.ndarray]:
    """``num_classes`` distinct 3x3 binary markings, flip-symmetric, none a rotation of another.

    Deterministic: patterns are enumerated in a fixed order and kept greedily when they
    differ from every kept pattern (and its rotations) in at least ``distance`` cells.
    """
    kept: list[np.ndarray] = []
    for bits in itertools.product((0, 1), repeat=6):
        left, middle = np.array(bits[:3]), np.array(bits[3:])
        pattern = np.stack([left, middle, left], axis=1)  # (3, 3), column 0 == column 2
        if not 3 <= pattern.sum() <= 6:
            continue
        rotations = [np.rot90(pattern, k) for k in range(4)]
        if all(min(np.abs(r - q).sum() for r in rotations) >= distance for q in kept):
            kept.append(pattern)
        if len(kept) == num_classes:
            return kept
    raise ValueError(
        f"synthetic.num_classes={num_classes} is more than the {len(kept)} markings available"
    )


def _draw_target(
    img: np.ndarray, x0: int, y0: int, side: int, label: int, params: SyntheticParams, patterns, rng
) -> None:
    """A grey square with a dark outline and the class detail centred in it."""
    x1, y1 = x0 + side - 1, y0 + side - 1
    cv2.rectangle(img, (x0, y0), (x1, y1), (20, 20, 20), -1)
    grey = int(rng.integers(110, 200))
    tint = rng.integers(-12, 13, size=3)
    body = tuple(
        int(np.clip(grey + t, 0, 255)) for t in tint
    )  # desaturated: the detail is the colour
    cv2.rectangle(img, (x0 + 1, y0 + 1), (x1 - 1, y1 - 1), body, -1)
    if params.detail == "colour":
        spot = max(2, int(round(side * params.marking_scale)))
        sx, sy = x0 + (side - spot) // 2, y0 + (side - spot) // 2
        hue = label * 180 / params.num_classes
        cv2.rectangle(
            img, (sx, sy), (sx + spot - 1, sy + spot - 1), _colour(rng, hue, jitter=3), -1
        )
        return
    cell = max(2, int(round(side * params.marking_scale)))  # dot pitch: the marking spans 3 cells
    start_x = x0 + (side - 3 * cell) // 2
    start_y = y0 + (side - 3 * cell) // 2
    for r, c in zip(*np.nonzero(patterns[label]), strict=True):
        xs, ys = start_x + c * cell, start_y + r * cell
        cv2.rectangle(img, (xs, ys), (xs + cell - 2, ys + cell - 2), (15, 15, 15), -1)


def _overlaps(box, others, margin: int = 1) -> bool:
    x0, y0, x1, y1 = box
    return any(
        x0 < b[2] + margin and b[0] < x1 + margin and y0 < b[3] + margin and b[1] < y1 + margin
        for b in others
    )


def fine_grained_image(
    rng: np.random.Generator, label: int, params: SyntheticParams, patterns: list[np.ndarray]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One image of class ``label`` and its target box ``(x0, y0, x1, y1)`` (half-open)."""
    size = params.canvas_size
    img = _background(rng, size)
    side = int(rng.integers(params.object_size[0], params.object_size[1] + 1))
    # keep the target inside the central crop that evaluation sees (resize ratio 1.34)
    margin = int(np.ceil(size * (1 - 1 / 1.34) / 2))
    lo, hi = margin, size - margin - side
    x0, y0 = (int(v) for v in rng.integers(lo, max(lo, hi) + 1, size=2))
    box = (x0, y0, x0 + side, y0 + side)
    placed = [box]
    for _ in range(int(rng.integers(params.distractors[0], params.distractors[1] + 1))):
        for _try in range(10):
            d = float(rng.uniform(*params.object_size))
            cx, cy = rng.uniform(d / 2, size - d / 2, size=2)
            dbox = (int(cx - d / 2), int(cy - d / 2), int(cx + d / 2) + 1, int(cy + d / 2) + 1)
            if not _overlaps(dbox, placed):
                _draw_shape(
                    img,
                    str(rng.choice([s for s in SHAPES if s != "square"])),
                    cx,
                    cy,
                    d,
                    _colour(rng),
                    rng,
                )
                placed.append(dbox)
                break
    _draw_target(img, x0, y0, side, label, params, patterns, rng)
    return img, box


def generate_fine_grained(root: str | Path, params: SyntheticParams) -> Path:
    """Write the built-in dataset as PNG files plus ``manifest.csv`` under ``root``.

    Returns the manifest path. Deterministic: image i of split s comes from the seed
    ``(params.seed, s, i)``, so the files do not depend on generation order.
    """
    root = Path(root)
    patterns = (
        markings(params.num_classes, params.marking_distance) if params.detail == "pattern" else []
    )
    rows = []
    for split_id, (split, per_class) in enumerate(
        (("train", params.train_per_class), ("test", params.test_per_class))
    ):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(per_class * params.num_classes):
            label = i % params.num_classes
            rng = np.random.default_rng([params.seed, split_id, i])
            img, (x0, y0, x1, y1) = fine_grained_image(rng, label, params, patterns)
            rel = f"{split}/{i:06d}.png"
            ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            if not ok:
                raise RuntimeError(f"could not encode {rel}")
            (root / rel).write_bytes(buf.tobytes())
            name = (
                f"hue_{label * 180 // params.num_classes:03d}"
                if params.detail == "colour"
                else f"marking_{label:02d}"
            )
            rows.append((rel, label, split, name, x0, y0, x1, y1))
    df = pd.DataFrame(
        rows, columns=["path", "label", "split", "class_name", "x0", "y0", "x1", "y1"]
    )
    return write_manifest(df, root / "manifest.csv")


# ---------------------------------------------------------------------------------------
# the upstream task


UPSTREAM_TASKS = ("shape_colour", "colour")


def upstream_classes(num_classes: int) -> list[tuple[str, int]]:
    """(shape, hue) categories of the ``shape_colour`` task, shape-major."""
    combos = [(s, h) for s in SHAPES for h in HUES]
    if num_classes > len(combos):
        raise ValueError(
            f"pretrain.num_classes={num_classes} exceeds the {len(combos)} upstream categories"
        )
    step = len(combos) / num_classes
    return [combos[int(i * step)] for i in range(num_classes)]


def upstream_batch(
    seed: int | list[int], count: int, *, num_classes: int, size: int, task: str = "shape_colour"
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` upstream images (count, size, size, 3) uint8 and labels (count,) int64.

    Each image holds one object (a random scale from 0.2 to 0.45 of the side, at a random
    position) among small clutter on the textured background. Tasks:

    * ``shape_colour``: the label is the object's (shape, hue family) category;
    * ``colour``: the label is the object's hue, in ``num_classes`` bins; its shape is
      random. Learned several times faster by a small ViT from scratch, and it still needs
      the object to be found among clutter of other colours.
    """
    if task not in UPSTREAM_TASKS:
        raise ValueError(f"unknown upstream task {task!r}; use one of {UPSTREAM_TASKS}")
    rng = np.random.default_rng(seed)
    classes = upstream_classes(num_classes) if task == "shape_colour" else None
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=count)
    for n in range(count):
        img = _background(rng, size)
        for _ in range(int(rng.integers(0, 7))):  # small clutter
            centre = tuple(int(v) for v in rng.uniform(0, size, size=2))
            cv2.circle(img, centre, int(rng.uniform(2, 4)), _colour(rng), -1)
        if classes is not None:
            shape, hue = classes[labels[n]]
        else:
            shape, hue = str(rng.choice(SHAPES)), labels[n] * 180 / num_classes
        d = float(rng.uniform(0.2, 0.45) * size)
        cx, cy = rng.uniform(d / 2, size - d / 2, size=2)
        _draw_shape(img, shape, cx, cy, d, _colour(rng, hue), rng)
        images[n] = img
    return images, labels.astype(np.int64)


# ---------------------------------------------------------------------------------------
# registration: `data.dataset: synthetic_fg` selects it like any real dataset


def expected_counts(params: SyntheticParams) -> ExpectedCounts:
    """What the validation suite expects of the generated dataset."""
    return ExpectedCounts(
        num_classes=params.num_classes,
        train=params.num_classes * params.train_per_class,
        test=params.num_classes * params.test_per_class,
    )


@register_dataset(
    "synthetic_fg",
    generated=True,
    description="built-in generated set: the hue of a spot on a small object among distractors",
    notes="size and difficulty from params data.synthetic; deterministic from data.synthetic.seed",
    expected_for=lambda params: expected_counts(params.data.synthetic),
)
def _generate(dataset_dir: Path, params) -> None:
    generate_fine_grained(dataset_dir, params.data.synthetic)
