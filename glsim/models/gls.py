"""The Global-Local Similarity module (paper Sec. 3.2, Eq. 1-2) and the crop it drives.

Three small functions, each batched (no Python loop over samples):

1. :func:`global_local_similarity` scores every patch token by its similarity to the CLS
   token (Eq. 1-2);
2. :func:`crop_boxes` turns the top-O scores into the pixel rectangle that encloses
   those patches;
3. :func:`crop_and_resize` cuts that rectangle out of each image and resizes it back to
   the input size, bilinearly.

And the same selection on any timm ViT's ``forward_features`` output, for the baselines'
explanations and the pretrained backbone's probe: :func:`gls_scores_and_boxes`,
:func:`gls_boxes_from_tokens`, :func:`vit_gls_boxes`, :func:`explain_with_encoder`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glsim.models.choices import METRICS
from glsim.models.output import ModelOutput


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
    stride: int | tuple[int, int] | None = None,
) -> Tensor:
    """The smallest pixel rectangle enclosing the ``top_k`` highest-scoring patches (Sec. 3.2).

    Selected patch (row r, col c) covers pixels ``[r*s, r*s+P) x [c*s, c*s+P)`` (s = P: the
    usual non-overlapping grid, ``[r*P, (r+1)*P)``); the box encloses all of them, the last
    selected row and column included (the paper's figure and text; the reference code drops
    them).

    Args:
        scores: (B, N) with N = grid rows * grid cols, row-major.
        grid_size: G or (rows, cols).
        patch_size: P or (P_h, P_w) in pixels.
        top_k: O, how many tokens to enclose (1 <= O <= N).
        stride: the patchifier's step s or (s_h, s_w) in pixels; ``None``: P (no overlap).
            TransFG's overlapping patches have s < P.

    Returns:
        int64 (B, 4) boxes ``(x0, y0, x1, y1)``, x = column, half-open.
    """
    rows, cols = _grid(grid_size)
    ph, pw = _grid(patch_size)
    sh, sw = _grid(patch_size if stride is None else stride)
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
    x0, x1 = c.amin(-1) * sw, c.amax(-1) * sw + pw  # (B,)
    y0, y1 = r.amin(-1) * sh, r.amax(-1) * sh + ph  # (B,)
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


def place_boxes(
    boxes: Tensor,
    *,
    image_size: tuple[int, int],
    where: str,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Boxes (B, 4) of the same widths and heights moved to the image centre (``centre``) or
    to uniformly random positions inside the image (``random``; ``generator``: the draw's).

    Moves a selector's boxes without changing their zoom: the position controls of
    :mod:`glsim.eval.localisation` and the ``gls_centred``/``gls_random_place`` selectors.
    """
    h, w = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]  # (B,) each
    rows, cols = image_size
    if where == "centre":
        x0, y0 = (cols - w) // 2, (rows - h) // 2
    elif where == "random":
        draw_on = boxes.device if generator is None else generator.device
        u = torch.rand(boxes.shape[0], 2, generator=generator, device=draw_on).to(boxes.device)
        x0 = (u[:, 0] * (cols - w + 1).float()).long().clamp(max=cols - w)
        y0 = (u[:, 1] * (rows - h + 1).float()).long().clamp(max=rows - h)
    else:
        raise ValueError(f"unknown box placement {where!r}; use centre or random")
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)  # (B, 4)


def crop_and_resize(
    images: Tensor,
    boxes: Tensor,
    size: tuple[int, int] | int,
    *,
    align_corners: bool = False,
) -> Tensor:
    """Cut ``boxes`` out of ``images`` and resize each crop to ``size`` (bilinear), batched.

    Equivalent, per sample, to ``F.interpolate(img[..., y0:y1, x0:x1], size, mode="bilinear",
    align_corners=align_corners)``: one ``grid_sample`` call whose sampling grid is clamped
    to each box, so no pixel outside a box leaks into its crop. ``align_corners=True`` is
    the reference code's ``F.upsample_bilinear`` (corner pixels map to corner pixels);
    ``False`` samples at half-pixel centres. Both keep exactly the box.

    Args:
        images: (B, C, H, W).
        boxes: (B, 4) integer pixel boxes ``(x0, y0, x1, y1)``, half-open, non-empty.
        size: output (height, width) or a single side.
        align_corners: the resize convention (see above).

    Returns:
        (B, C, out_h, out_w) crops, same dtype as ``images``.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    _, _, h, w = images.shape
    b = boxes.to(device=images.device, dtype=torch.float32)
    x0, y0, x1, y1 = b.unbind(-1)  # (B,) each
    # a check on tensor values, which torch.export (ONNX export) cannot trace; crop_boxes
    # never makes an empty box
    if not torch.compiler.is_compiling() and bool(((x1 <= x0) | (y1 <= y0)).any()):
        raise ValueError("crop_and_resize: every box needs x1 > x0 and y1 > y0")

    def source_coords(lo: Tensor, hi: Tensor, n_out: int, n_in: int) -> Tensor:
        steps = torch.arange(n_out, device=images.device, dtype=torch.float32)  # (n_out,)
        if align_corners:  # F.interpolate(align_corners=True): ends on the box's end pixels
            scale = (hi - 1 - lo) / max(n_out - 1, 1)  # (B,)
            src = lo[:, None] + steps[None] * scale[:, None]  # (B, n_out)
        else:  # half-pixel centres of F.interpolate(align_corners=False)
            src = lo[:, None] + (steps[None] + 0.5) * ((hi - lo) / n_out)[:, None] - 0.5
        src = torch.maximum(torch.minimum(src, (hi - 1)[:, None]), lo[:, None])
        return src / max(n_in - 1, 1) * 2 - 1  # (B, n_out) in grid_sample's [-1, 1]

    gx = source_coords(x0, x1, out_w, w)[:, None, :].expand(-1, out_h, -1)  # (B, out_h, out_w)
    gy = source_coords(y0, y1, out_h, h)[:, :, None].expand(-1, -1, out_w)  # (B, out_h, out_w)
    grid = torch.stack([gx, gy], dim=-1).to(images.dtype)  # (B, out_h, out_w, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def gls_flops(num_tokens: int, dim: int) -> int:
    """FLOPs of GLS for N patch tokens of width D: ``(D + 2(D+1) + 1) * N`` (METHOD.md)."""
    return (dim + 2 * (dim + 1) + 1) * num_tokens


# --- GLS on a timm ViT's tokens ------------------------------------------------------------


def cls_and_patches(vit: nn.Module, tokens: Tensor) -> Tensor:
    """(B, P+N, D) with P prefix tokens (CLS first, then registers) -> (B, 1+N, D)."""
    return torch.cat([tokens[:, :1], tokens[:, vit.num_prefix_tokens :]], dim=1)


def vit_crop_boxes(vit: nn.Module, scores: Tensor, *, top_k: int) -> Tensor:
    """:func:`crop_boxes` on ``vit``'s patch grid (its patch size and patchifier stride)."""
    embed = vit.patch_embed
    return crop_boxes(
        scores,
        grid_size=tuple(embed.grid_size),
        patch_size=tuple(embed.patch_size),
        stride=getattr(embed.proj, "stride", None),
        top_k=top_k,
    )


@torch.no_grad()
def gls_scores_and_boxes(
    vit: nn.Module, tokens: Tensor, *, top_k: int | None, metric: str = "cosine"
) -> tuple[Tensor, Tensor | None]:
    """GLS scores (B, N) of a timm ViT's ``forward_features`` output (B, P+N, D) and, when
    ``top_k`` is given, the crop boxes (B, 4) enclosing the ``top_k`` best (else ``None``)."""
    scores = global_local_similarity(cls_and_patches(vit, tokens), metric)  # (B, N)
    boxes = None if top_k is None else vit_crop_boxes(vit, scores, top_k=top_k)
    return scores, boxes


def gls_boxes_from_tokens(
    vit: nn.Module, tokens: Tensor, *, top_k: int, metric: str = "cosine"
) -> Tensor:
    """GLS crop boxes from a timm ViT's ``forward_features`` output (B, P+N, D)."""
    return gls_scores_and_boxes(vit, tokens, top_k=top_k, metric=metric)[1]


@torch.no_grad()
def vit_gls_boxes(vit: nn.Module, images: Tensor, *, top_k: int, metric: str = "cosine") -> Tensor:
    """GLS crop boxes of a plain timm ViT (e.g. the pretrained backbone before fine-tuning)."""
    return gls_boxes_from_tokens(vit, vit.forward_features(images), top_k=top_k, metric=metric)


def explain_with_encoder(
    encoder: nn.Module, images: Tensor, logits: Tensor, *, top_k: int | None
) -> ModelOutput:
    """``logits`` of a model built on the ViT ``encoder`` and, when ``top_k`` is given, the GLS
    scores and boxes of the encoder's own pass over ``images`` (:func:`vit_gls_boxes`)."""
    if top_k is None:
        return ModelOutput(logits=logits)
    with torch.no_grad():
        tokens = encoder.forward_features(images)  # (B, P+N, D)
    scores, boxes = gls_scores_and_boxes(encoder, tokens, top_k=top_k)
    return ModelOutput(logits=logits, scores=scores, boxes=boxes)
