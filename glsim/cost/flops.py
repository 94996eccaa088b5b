"""``glsim cost flops``: paper Table 1 (and appendix Tables 7-8) for any timm ViT.

Backbone FLOPs and each discriminative feature selection mechanism's FLOPs, in MFLOPs and
as % of the backbone, from the closed forms of :mod:`glsim.models.dfsm` (the ones
``benchmarks/dfsm_cost.py`` prints and ``tests/models/test_dfsm.py`` checks against the
paper). The architecture (patch size, depth, heads, width, MLP ratio) is read from the timm
model built on the meta device: nothing is allocated or downloaded.

The ``cost`` DVC stage does not run it (it is closed-form, nothing to measure).
"""

from __future__ import annotations

from typing import Any

from glsim.cost.measure import format_rows
from glsim.errors import CommandError

DFSM_COLUMNS = ("gls", "rollout", "psm", "maws", "sacm")


def vit_setting(name: str, **overrides: Any) -> dict[str, Any]:
    """``patch_size``, ``depth``, ``heads``, ``dim``, ``mlp_ratio`` of a timm ViT by name
    (``overrides``: its constructor arguments, e.g. ``depth=2``)."""
    import timm
    import torch
    from timm.models.vision_transformer import VisionTransformer

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **overrides)
    except Exception as err:  # noqa: BLE001 - timm's "Unknown model" and friends
        raise CommandError(
            f"--model {name!r} with {overrides or 'no overrides'}: timm cannot build it "
            f"({err}); see timm.list_models('vit_*')"
        ) from None
    if not isinstance(model, VisionTransformer):
        raise CommandError(
            f"--model {name!r} builds a {type(model).__name__}, not a timm VisionTransformer"
        )
    return model_setting(model)


def model_setting(model: Any) -> dict[str, Any]:
    """The Table 1 setting of a built timm ``VisionTransformer`` (any device)."""
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


def format_flops(rows: list[dict[str, Any]], fmt: str) -> str:
    """``rows`` of :func:`flops_rows` as ``json``, ``csv`` or a ``text`` table."""
    if fmt != "text":
        return format_rows(rows, fmt)
    lines = [f"{rows[0]['model']} (MFLOPs, % of backbone)"]
    head = f"{'size':>5} {'backbone':>12}" + "".join(f" {n:>22}" for n in DFSM_COLUMNS)
    lines.append(head)
    for r in rows:
        cells = "".join(f" {r[f'{n}_mflops']:>11.4g} {r[f'{n}_pct']:>9.4g}%" for n in DFSM_COLUMNS)
        lines.append(f"{r['image_size']:>5} {r['backbone_mflops']:>12.6g}{cells}")
    return "\n".join(lines)
