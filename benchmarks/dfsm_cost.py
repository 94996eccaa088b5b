"""Table 1 of the paper: the cost of each discriminative feature selection mechanism.

Prints, per image size and mechanism, the analytic MFLOPs and % of the ViT B-16 backbone
from :mod:`glsim.models.dfsm` next to the published values, and, for the attention
products this repo implements (PSM, rollout), the matmul FLOPs torch's FlopCounterMode
counts when running ``glsim.models.attention`` on meta tensors (no memory, instant).

    .venv/bin/python benchmarks/dfsm_cost.py [--patch-size 16 --dim 768 --heads 12]
"""

from __future__ import annotations

import argparse

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from glsim.models.attention import attention_rollout, psm_scores
from glsim.models.dfsm import TABLE1_PUBLISHED, counted_backbone_macs, dfsm_table, num_tokens


def counted_selector_mflops(
    name: str, *, image_size: int, patch_size: int, depth: int, heads: int
) -> float:
    """FLOPs FlopCounterMode counts for our implementation (matmuls only, 2 per MAC)."""
    if name == "psm":
        tokens, layers, fn = (
            num_tokens(image_size, patch_size, patch_size - 4),
            depth - 1,
            psm_scores,
        )
    else:
        tokens, layers, fn = num_tokens(image_size, patch_size), depth, attention_rollout
    attns = [torch.empty(1, heads, tokens, tokens, device="meta") for _ in range(layers)]
    counter = FlopCounterMode(display=False)
    with counter:
        fn(attns)
    return counter.get_total_flops() / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()
    setting = dict(patch_size=args.patch_size, depth=args.depth, heads=args.heads, dim=args.dim)
    is_b16 = setting == dict(patch_size=16, depth=12, heads=12, dim=768)

    with torch.device("meta"):
        vit = timm.create_model(
            "vit_base_patch16_224",
            pretrained=False,
            num_classes=200,
            patch_size=args.patch_size,
            depth=args.depth,
            num_heads=args.heads,
            embed_dim=args.dim,
            dynamic_img_size=True,
        ).eval()

    print(
        f"{'S':>5} {'DFSM':>8} {'MFLOPs':>10} {'published':>10} {'counted':>10} {'% bb':>10} {'published':>10}"
    )
    current = None
    for row in dfsm_table(**setting):
        size, name = row["image_size"], row["dfsm"]
        if size != current:
            current = size
            macs = counted_backbone_macs(vit, size) / 1e9
            print(
                f"{size:>5} backbone {row['backbone_gflops']:.2f} GFLOPs "
                f"(FlopCounterMode: {macs:.2f} GMACs + patchifier counted twice)"
            )
        published = TABLE1_PUBLISHED[size][name] if is_b16 else (float("nan"), float("nan"))
        counted = (
            f"{counted_selector_mflops(name, image_size=size, patch_size=args.patch_size, depth=args.depth, heads=args.heads):10.3g}"
            if name in ("psm", "rollout")
            else f"{'-':>10}"
        )
        print(
            f"{size:>5} {name:>8} {row['mflops']:10.3g} {published[0]:10.3g} {counted} "
            f"{row['percent_of_backbone']:10.5g} {published[1]:10.5g}"
        )


if __name__ == "__main__":
    main()
