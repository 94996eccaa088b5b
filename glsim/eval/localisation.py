"""Does a selector's crop find the object? Box hit rates against a shuffled-box baseline.

A crop *hits* when the centre of the object's box (in model-input pixels) lies inside it,
the pointing-game criterion. Large boxes hit more often by chance, so every rate is
reported beside the *shuffled* rate: the same boxes paired with another image's object
(a cyclic shift over the evaluated set), which keeps the box-size distribution and
removes only the link between box and image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from glsim.models.gls import cls_and_patches, global_local_similarity, vit_crop_boxes


def centre_inside(boxes: Tensor, targets: Tensor) -> Tensor:
    """(B, 4) crop boxes, (B, 4) object boxes -> (B,) bool: object centre inside the crop."""
    cx = (targets[:, 0] + targets[:, 2]).float() / 2
    cy = (targets[:, 1] + targets[:, 3]).float() / 2
    return (boxes[:, 0] <= cx) & (cx < boxes[:, 2]) & (boxes[:, 1] <= cy) & (cy < boxes[:, 3])


def hit_rates(boxes: Tensor, targets: Tensor, image_size: int) -> dict[str, float]:
    """Hit rate, shuffled-box hit rate, mean zoom (S / box side) and mean IoU with the object."""
    boxes, targets = boxes.long().cpu(), targets.float().cpu()
    shuffled = boxes.roll(1, dims=0)
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float().sqrt()
    ix = (
        torch.minimum(boxes[:, 2], targets[:, 2]) - torch.maximum(boxes[:, 0], targets[:, 0])
    ).clamp(min=0)
    iy = (
        torch.minimum(boxes[:, 3], targets[:, 3]) - torch.maximum(boxes[:, 1], targets[:, 1])
    ).clamp(min=0)
    inter = ix * iy
    area_b = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float()
    area_t = (targets[:, 2] - targets[:, 0]) * (targets[:, 3] - targets[:, 1])
    return {
        "hit_rate": 100.0 * centre_inside(boxes, targets).float().mean().item(),
        "hit_rate_shuffled": 100.0 * centre_inside(shuffled, targets).float().mean().item(),
        "zoom": (image_size / side).mean().item(),
        "iou": (inter / (area_b + area_t - inter)).mean().item(),
    }


@torch.no_grad()
def probe_backbone(params, *, split: str = "test") -> dict:
    """Hit rates of the *pretrained* backbone's selectors before any fine-tuning.

    GLS (the configured metric) and last-layer CLS attention, each with the configured O,
    on ``split`` of the configured dataset (which must carry object boxes).
    """
    from glsim.data.transforms import eval_box_transform
    from glsim.eval.evaluate import eval_loader
    from glsim.models.attention import cls_attention, forward_blocks_with_attention
    from glsim.models.backbone import create_vit
    from glsim.runs import shards_dir

    bb, d, top_k = params.model.backbone, params.data, params.model.glsim.top_k
    vit = create_vit(bb.name, image_size=d.image_size, weights=bb.weights, **bb.overrides).eval()
    loader = eval_loader(params, vit, shards_dir(params), split)
    gls, attn, targets = [], [], []
    for images, _, meta in loader:
        if "box" not in meta:  # real datasets carry no object boxes: nothing to measure
            return {"boxes": False, "dataset": d.dataset}
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        x, attention = forward_blocks_with_attention(vit.blocks, x)
        tokens = cls_and_patches(vit, vit.norm(x))  # (B, 1+N, D)
        scores = global_local_similarity(tokens, params.model.glsim.metric)  # (B, N)
        gls.append(vit_crop_boxes(vit, scores, top_k=top_k))
        scores = cls_attention(attention[-1], num_prefix_tokens=vit.num_prefix_tokens)  # (B, N)
        attn.append(vit_crop_boxes(vit, scores, top_k=top_k))
        targets.append(
            torch.from_numpy(
                eval_box_transform(
                    meta["box"].numpy(),
                    meta["size"].numpy(),
                    image_size=d.image_size,
                    resize_ratio=d.resize_ratio,
                )
            ).float()
        )
    target = torch.cat(targets)
    return {
        "boxes": True,
        "dataset": d.dataset,
        "gls": hit_rates(torch.cat(gls), target, d.image_size),
        "attention": hit_rates(torch.cat(attn), target, d.image_size),
        "top_k": top_k,
    }
