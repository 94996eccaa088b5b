"""``glsim cost flops``: paper Table 1 (and appendix Tables 7-8) for any timm ViT.

Backbone FLOPs and each discriminative feature selection mechanism's FLOPs, in MFLOPs and
as % of the backbone, from the closed forms of :mod:`glsim.models.dfsm` (the ones
``benchmarks/dfsm_cost.py`` prints and ``tests/models/test_dfsm.py`` checks against the
paper). The architecture (patch size, depth, heads, width, MLP ratio) is read from the timm
model built on the meta device: nothing is allocated or downloaded.

Not imported by any DVC stage.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from typing import Any

from glsim.errors import CommandError

DFSM_COLUMNS = ("gls", "rollout", "psm", "maws", "sacm")


def vit_setting(name: str) -> dict[str, Any]:
    """``patch_size``, ``depth``, ``heads``, ``dim``, ``mlp_ratio`` of a timm ViT by name."""
    import timm
    import torch
    from timm.models.vision_transformer import VisionTransformer

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception as err:  # noqa: BLE001 - timm's "Unknown model" and friends
        raise CommandError(
            f"--model {name!r}: timm cannot build it ({err}); see timm.list_models('vit_*')"
        ) from None
    if not isinstance(model, VisionTransformer):
        raise CommandError(
            f"--model {name!r} builds a {type(model).__name__}, not a timm VisionTransformer"
        )
    patch = model.patch_embed.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    block = model.blocks[0]
    dim = int(model.embed_dim)
    return {
        "patch_size": int(patch),
        "depth": len(model.blocks),
        "heads": int(block.attn.num_heads),
        "dim": dim,
        "mlp_ratio": block.mlp.fc1.out_features / dim,
    }


def flops_rows(
    model: str, image_sizes: list[int], *, num_classes: int = 200
) -> list[dict[str, Any]]:
    """One row per image size: ``model``, ``image_size``, ``backbone_mflops`` and, per DFSM,
    ``<dfsm>_mflops`` and ``<dfsm>_pct`` (% of the backbone)."""
    from glsim.models.dfsm import backbone_flops, dfsm_flops

    setting = vit_setting(model)
    rows = []
    for size in image_sizes:
        try:
            backbone = backbone_flops(
                image_size=size,
                patch_size=setting["patch_size"],
                depth=setting["depth"],
                dim=setting["dim"],
                mlp_ratio=setting["mlp_ratio"],
                num_classes=num_classes,
            )
            row: dict[str, Any] = {
                "model": model,
                "image_size": size,
                **{k: setting[k] for k in ("patch_size", "depth", "heads", "dim")},
                "backbone_mflops": backbone / 1e6,
            }
            for name in DFSM_COLUMNS:
                flops = dfsm_flops(
                    name,
                    image_size=size,
                    patch_size=setting["patch_size"],
                    depth=setting["depth"],
                    heads=setting["heads"],
                    dim=setting["dim"],
                )
                row[f"{name}_mflops"] = flops / 1e6
                row[f"{name}_pct"] = 100 * flops / backbone
        except ValueError as err:  # an image smaller than a patch
            raise CommandError(f"--image-size {size}: {err}") from None
        rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    lines = [f"{rows[0]['model']} (MFLOPs, % of backbone)"]
    head = f"{'size':>5} {'backbone':>12}" + "".join(f" {n:>22}" for n in DFSM_COLUMNS)
    lines.append(head)
    for r in rows:
        cells = "".join(
            f" {r[f'{n}_mflops']:>11.4g} {r[f'{n}_pct']:>9.4g}%" for n in DFSM_COLUMNS
        )
        lines.append(f"{r['image_size']:>5} {r['backbone_mflops']:>12.6g}{cells}")
    return "\n".join(lines)


def cmd_flops(args: argparse.Namespace) -> int:
    if args.num_classes < 0:
        raise CommandError("--num-classes must be >= 0")
    rows = flops_rows(args.model, args.image_size, num_classes=args.num_classes)
    print(format_rows(rows, "json" if args.json else "csv" if args.csv else "text"))
    return 0


def add_cost_commands(subparsers) -> None:
    cost = subparsers.add_parser("cost", help="the cost of the feature selection mechanisms")
    sub = cost.add_subparsers(dest="cost_command", required=True)
    p = sub.add_parser(
        "flops",
        help="backbone and DFSM FLOPs (paper Table 1)",
        description="Backbone FLOPs and each DFSM's (gls, rollout, psm, maws, sacm) with % "
        "of the backbone, from the closed forms of glsim.models.dfsm.",
    )
    p.add_argument("--model", default="vit_base_patch16_224", help="a timm ViT name")
    p.add_argument("--image-size", type=int, nargs="+", default=[224, 448, 768, 1024])
    p.add_argument(
        "--num-classes", type=int, default=200, help="head width (default 200, CUB, as Table 1)"
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", action="store_true")
    p.set_defaults(func=cmd_flops)
