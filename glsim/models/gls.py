"""The Global-Local Similarity module (paper Sec. 3.2, Eq. 1-2) and the crop it drives.

Three small functions, each batched (no Python loop over samples):

1. :func:`global_local_similarity` scores every patch token by its similarity to the CLS
   token (Eq. 1-2);
2. :func:`crop_boxes` turns the top-O scores into the pixel rectangle that encloses
   those patches;
3. :func:`crop_and_resize` cuts that rectangle out of each image and resizes it back to
   the input size, bilinearly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

METRICS = ("cosine", "l1", "l2")


def global_local_similarity(tokens: Tensor, metric: str = "cosine") -> Tensor:
    """Similarity of the CLS token to every patch token (paper Eq. 1-2).

    Args:
        tokens: (B, 1+N, D) encoder output, CLS token first.
        metric: ``cosine`` (Eq. 2), or ``l1`` / ``l2`` (Table 14), returned negated (minus the
            mean absolute / squared difference over D) so that larger always means more similar.

    Returns:
        (B, N) scores; larger means more similar to the global representation.
    """
    if tokens.ndim != 3 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be (B, 1+N, D) with N >= 1, got {tuple(tokens.shape)}")
    cls, patches = tokens[:, :1], tokens[:, 1:]  # (B, 1, D), (B, N, D)
    if metric == "cosine":
        return F.cosine_similarity(patches, cls, dim=-1)  # (B, N)
    if metric == "l1":
        return -(patches - cls).abs().mean(dim=-1)  # (B, N)
    if metric == "l2":
        return -(patches - cls).pow(2).mean(dim=-1)  # (B, N)
    raise ValueError(f"unknown similarity metric {metric!r}; use one of {METRICS}")


def _grid(grid_size: int | tuple[int, int]) -> tuple[int, int]:
    return (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)  # type: ignore[return-value]


def crop_boxes(
    scores: Tensor,
    *,
    grid_size: int | tuple[int, int],
    patch_size: int | tuple[int, int],
    top_k: int,
) -> Tensor:
    """The smallest pixel rectangle enclosing the ``top_k`` highest-scoring patches (Sec. 3.2).

    Selected patch (row r, col c) covers pixels ``[r*P, (r+1)*P) x [c*P, (c+1)*P)``; the box
    encloses all of them, the last selected row and column included (the paper's figure and
    text; the reference code drops them).

    Args:
        scores: (B, N) with N = grid rows * grid cols, row-major.
        grid_size: G or (rows, cols).
        patch_size: P or (P_h, P_w) in pixels.
        top_k: O, how many tokens to enclose (1 <= O <= N).

    Returns:
        int64 (B, 4) boxes ``(x0, y0, x1, y1)``, x = column, half-open.
    """
    rows, cols = _grid(grid_size)
    ph, pw = _grid(patch_size)
    if scores.ndim != 2 or scores.shape[1] != rows * cols:
        raise ValueError(
            f"scores must be (B, {rows * cols}) for a {rows}x{cols} grid, got {tuple(scores.shape)}"
        )
    if not 1 <= top_k <= rows * cols:
        raise ValueError(
            f"top_k must be in [1, {rows * cols}] for a {rows}x{cols} grid, got {top_k}"
        )
    index = scores.topk(top_k, dim=-1).indices  # (B, O)
    r, c = index // cols, index % cols  # (B, O) each
    x0, x1 = c.amin(-1) * pw, (c.amax(-1) + 1) * pw  # (B,)
    y0, y1 = r.amin(-1) * ph, (r.amax(-1) + 1) * ph  # (B,)
    return torch.stack([x0, y0, x1, y1], dim=-1).long()  # (B, 4)


def enlarge_boxes(boxes: Tensor, *, min_size: int, image_size: tuple[int, int]) -> Tensor:
    """Grow each box about its centre to at least ``min_size`` per side, kept inside the image.

    Bounds the zoom factor (S / side) for the ablation on crop size; a no-op for ``min_size=0``.
    """
    if min_size <= 0:
        return boxes
    h, w = image_size
    out = boxes.clone()
    for lo, hi, limit in ((0, 2, w), (1, 3, h)):
        side = (boxes[:, hi] - boxes[:, lo]).clamp(min=min(min_size, limit))  # (B,)
        centre2 = boxes[:, lo] + boxes[:, hi]  # twice the centre, stays integral
        start = ((centre2 - side) // 2).clamp(0, None)
        start = torch.minimum(start, limit - side)
        out[:, lo], out[:, hi] = start, start + side
    return out


def crop_and_resize(images: Tensor, boxes: Tensor, size: tuple[int, int] | int) -> Tensor:
    """Cut ``boxes`` out of ``images`` and resize each crop to ``size`` (bilinear), batched.

    Equivalent, per sample, to ``F.interpolate(img[..., y0:y1, x0:x1], size, mode="bilinear",
    align_corners=False)``: one ``grid_sample`` call whose sampling grid is clamped to each
    box, so no pixel outside a box leaks into its crop.

    Args:
        images: (B, C, H, W).
        boxes: (B, 4) integer pixel boxes ``(x0, y0, x1, y1)``, half-open, non-empty.
        size: output (height, width) or a single side.

    Returns:
        (B, C, out_h, out_w) crops, same dtype as ``images``.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    _, _, h, w = images.shape
    b = boxes.to(device=images.device, dtype=torch.float32)
    x0, y0, x1, y1 = b.unbind(-1)  # (B,) each
    if bool(((x1 <= x0) | (y1 <= y0)).any()):
        raise ValueError("crop_and_resize: every box needs x1 > x0 and y1 > y0")

    def source_coords(lo: Tensor, hi: Tensor, n_out: int, n_in: int) -> Tensor:
        # half-pixel-centre mapping of F.interpolate(align_corners=False), clamped to the box
        centres = torch.arange(n_out, device=images.device, dtype=torch.float32) + 0.5  # (n_out,)
        src = lo[:, None] + centres[None] * ((hi - lo) / n_out)[:, None] - 0.5  # (B, n_out)
        src = torch.maximum(torch.minimum(src, (hi - 1)[:, None]), lo[:, None])
        return src / max(n_in - 1, 1) * 2 - 1  # (B, n_out) in grid_sample's [-1, 1]

    gx = source_coords(x0, x1, out_w, w)[:, None, :].expand(-1, out_h, -1)  # (B, out_h, out_w)
    gy = source_coords(y0, y1, out_h, h)[:, :, None].expand(-1, -1, out_w)  # (B, out_h, out_w)
    grid = torch.stack([gx, gy], dim=-1).to(images.dtype)  # (B, out_h, out_w, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def gls_flops(num_tokens: int, dim: int) -> int:
    """FLOPs of GLS for N patch tokens of width D: ``(D + 2(D+1) + 1) * N`` (METHOD.md)."""
    return (dim + 2 * (dim + 1) + 1) * num_tokens
