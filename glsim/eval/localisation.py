"""Does a selector's crop find the object? Box measures against chance.

Per crop box (model-input pixels) and object box: the *hit* (the object's centre inside
the crop), the *IoU*, and the *object share* (the fraction of the object inside the crop);
per selector the *pointing game* (the top-scoring token's centre inside the object). Large
boxes score well by chance, so every measure is reported beside three controls with the
same box sizes: *shuffled* (the same boxes paired with another image's object, a cyclic
shift over the set), *centred* (each box moved to the image centre) and *random* (each box
at a uniformly random position, seeded); for the pointing game, the shuffled points, the
image centre and a random point. A selector localises when it beats all three.
"""

from __future__ import annotations

import torch
from torch import Tensor

from glsim.models.gls import (
    cls_and_patches,
    global_local_similarity,
    place_boxes,
    vit_crop_boxes,
)


def centre_inside(boxes: Tensor, targets: Tensor) -> Tensor:
    """(B, 4) crop boxes, (B, 4) object boxes -> (B,) bool: object centre inside the crop."""
    cx = (targets[:, 0] + targets[:, 2]).float() / 2
    cy = (targets[:, 1] + targets[:, 3]).float() / 2
    return (boxes[:, 0] <= cx) & (cx < boxes[:, 2]) & (boxes[:, 1] <= cy) & (cy < boxes[:, 3])


CONTROL_SEED = 0  # the random control's positions


def _overlap(boxes: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection, crop area and object area, each (B,), float."""
    boxes, targets = boxes.float(), targets.float()
    ix = (
        torch.minimum(boxes[:, 2], targets[:, 2]) - torch.maximum(boxes[:, 0], targets[:, 0])
    ).clamp(min=0)
    iy = (
        torch.minimum(boxes[:, 3], targets[:, 3]) - torch.maximum(boxes[:, 1], targets[:, 1])
    ).clamp(min=0)
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_t = (targets[:, 2] - targets[:, 0]) * (targets[:, 3] - targets[:, 1])
    return ix * iy, area_b, area_t


def control_boxes(boxes: Tensor, image_size: int) -> dict[str, Tensor]:
    """The three controls of ``boxes`` (B, 4), each with the same widths and heights:
    ``shuffled`` (another image's box), ``centred`` and ``random`` positions."""
    g = torch.Generator().manual_seed(CONTROL_SEED)
    size = (image_size, image_size)
    return {
        "shuffled": boxes.roll(1, dims=0),
        "centred": place_boxes(boxes, image_size=size, where="centre"),
        "random": place_boxes(boxes, image_size=size, where="random", generator=g),
    }


def box_measures(boxes: Tensor, targets: Tensor) -> dict[str, float]:
    """Mean hit rate (%), IoU and object share of crop boxes against object boxes."""
    inter, area_b, area_t = _overlap(boxes, targets)
    return {
        "hit_rate": 100.0 * centre_inside(boxes, targets).float().mean().item(),
        "iou": (inter / (area_b + area_t - inter)).mean().item(),
        "object_share": (inter / area_t).mean().item(),
    }


def hit_rates(boxes: Tensor, targets: Tensor, image_size: int) -> dict[str, float]:
    """Hit rate, IoU and object share of ``boxes``, each beside the same measure of the
    three controls (``<measure>_shuffled``, ``_centred``, ``_random``), and the mean zoom
    (S / box side)."""
    boxes, targets = boxes.long().cpu(), targets.float().cpu()
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float().sqrt()
    out = box_measures(boxes, targets)
    for name, control in control_boxes(boxes, image_size).items():
        out.update({f"{k}_{name}": v for k, v in box_measures(control, targets).items()})
    out["zoom"] = (image_size / side).mean().item()
    return out


def pointing(points: Tensor, targets: Tensor, image_size: int) -> dict[str, float]:
    """The pointing game (%): is the top-scoring token's centre (B, 2) ``(x, y)`` inside the
    object box, beside the shuffled points, the image centre and a random point."""
    points, targets = points.float().cpu(), targets.float().cpu()
    g = torch.Generator().manual_seed(CONTROL_SEED)

    def rate(p: Tensor) -> float:
        inside = (
            (targets[:, 0] <= p[:, 0]) & (p[:, 0] < targets[:, 2])
            & (targets[:, 1] <= p[:, 1]) & (p[:, 1] < targets[:, 3])
        )  # fmt: skip
        return 100.0 * inside.float().mean().item()

    centre = torch.full_like(points, image_size / 2)
    return {
        "pointing": rate(points),
        "pointing_shuffled": rate(points.roll(1, dims=0)),
        "pointing_centred": rate(centre),
        "pointing_random": rate(torch.rand(points.shape, generator=g) * image_size),
    }


def top_token_centres(vit, scores: Tensor) -> Tensor:
    """(B, N) scores on ``vit``'s patch grid -> (B, 2) pixel centre ``(x, y)`` of the best."""
    embed = vit.patch_embed
    _, cols = embed.grid_size
    ph, pw = embed.patch_size
    sh, sw = getattr(embed.proj, "stride", None) or (ph, pw)
    best = scores.argmax(-1)  # (B,)
    r, c = best // cols, best % cols
    return torch.stack([c * sw + pw / 2, r * sh + ph / 2], dim=1).float()


def probe_data(params, *, split: str = "test") -> list[tuple[Tensor, Tensor]] | None:
    """``split`` of the configured dataset as the probe sees it: batches of (images, object
    boxes in model-input pixels); None when the dataset carries no object boxes (real
    datasets), which is known from its first batch. Read once, it serves any number of
    backbones of the configured architecture (the localisation curve's snapshots)."""
    from glsim.data.transforms import eval_box_transform
    from glsim.eval.evaluate import eval_loader
    from glsim.models.backbone import create_vit
    from glsim.runs import shards_dir

    bb, d = params.model.backbone, params.data
    vit = create_vit(bb.name, image_size=d.image_size, weights=None, **bb.overrides)
    out = []
    for images, _, meta in eval_loader(params, vit, shards_dir(params), split):
        if "box" not in meta:
            return None
        target = eval_box_transform(
            meta["box"].numpy(), meta["size"].numpy(),
            image_size=d.image_size, resize_ratio=d.resize_ratio,
        )  # fmt: skip
        out.append((images, torch.from_numpy(target).float()))
    return out


@torch.no_grad()
def probe_backbone(params, *, split: str = "test", data=None, weights=None) -> dict:
    """Box measures and the pointing game of the *pretrained* backbone's selectors before
    any fine-tuning, each against its controls.

    GLS (the configured metric), last-layer CLS attention, attention rollout and random
    scores (a selector that knows nothing), each with the configured O, on ``split`` of the
    configured dataset (which must carry object boxes). ``data``: :func:`probe_data`, read
    here when not given; ``weights``: the backbone's weights file (default
    ``model.backbone.weights``).
    """
    from glsim.models.attention import (
        attention_rollout,
        cls_attention,
        forward_blocks_with_attention,
    )
    from glsim.models.backbone import create_vit

    bb, d, top_k = params.model.backbone, params.data, params.model.glsim.top_k
    if data is None:
        data = probe_data(params, split=split)
    if data is None:  # real datasets carry no object boxes: nothing to measure
        return {"boxes": False, "dataset": d.dataset}
    weights = bb.weights if weights is None else weights
    vit = create_vit(bb.name, image_size=d.image_size, weights=weights, **bb.overrides).eval()
    names = ("gls", "attention", "rollout", "random")
    boxes: dict[str, list[Tensor]] = {n: [] for n in names}
    points: dict[str, list[Tensor]] = {n: [] for n in names}
    g = torch.Generator().manual_seed(CONTROL_SEED)
    for images, _ in data:
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        x, attention = forward_blocks_with_attention(vit.blocks, x)
        tokens = cls_and_patches(vit, vit.norm(x))  # (B, 1+N, D)
        prefix = vit.num_prefix_tokens
        scores = {
            "gls": global_local_similarity(tokens, params.model.glsim.metric),  # (B, N)
            "attention": cls_attention(attention[-1], num_prefix_tokens=prefix),
            "rollout": attention_rollout(attention, num_prefix_tokens=prefix),
            "random": torch.rand(tokens.shape[0], tokens.shape[1] - 1, generator=g),
        }
        for name, s in scores.items():
            boxes[name].append(vit_crop_boxes(vit, s, top_k=top_k))
            points[name].append(top_token_centres(vit, s))
    target = torch.cat([t for _, t in data])
    report: dict = {"boxes": True, "dataset": d.dataset}
    for name in names:
        report[name] = {
            **hit_rates(torch.cat(boxes[name]), target, d.image_size),
            **pointing(torch.cat(points[name]), target, d.image_size),
        }
    report["top_k"] = top_k
    return report
