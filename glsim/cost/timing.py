"""``glsim cost time``: each DFSM's wall time beside the backbone forward, on this machine.

Table 1 counts FLOPs (:mod:`glsim.cost.flops`); this measures seconds. For a timm ViT at
random weights and each image size S, every repeat times, in turn, the backbone forward
(``vit(images)``, batch B) and each discriminative feature selection mechanism on inputs
of the shapes it gets inside its model, by the functions the models call:

* ``gls`` (GLSim, Eq. 1-2): :func:`glsim.models.gls.global_local_similarity` on the
  encoder output (B, 1+N, D);
* ``rollout`` (RAMS-Trans, DCAL): :func:`glsim.models.attention.attention_rollout` on L
  maps (B, H, T, T);
* ``psm`` (TransFG, Eq. 4-5): :func:`glsim.models.attention.psm_scores` on the first L-1
  maps of the overlapping patchifier (stride P - 4: T' = 325 tokens at 224 for P = 16);
* ``maws`` (FFVT, Eq. 6-8): :func:`glsim.models.attention.maws_scores` on each of the
  first L-1 layers' scores.

SACM (AF-Trans) has a closed form in :mod:`glsim.models.dfsm` but no implementation in
glsim, so no time. The maps are random row-stochastic matrices (their values do not change
the arithmetic), one tensor listed for every layer so that 448 px fits in memory. Computing
the maps themselves (the explicit attention path,
:func:`~glsim.models.attention.forward_blocks_with_attention`, which PSM, MAWS and rollout
need and fused attention avoids) is not counted, as Table 1 does not count it.

Per size: the median milliseconds per call of each, and ``<dfsm>_ratio``, the median over
repeats of the paired ratio DFSM time / backbone forward time (x 100: Table 1's "% of
backbone", measured instead of counted).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from glsim.cost.flops import model_setting
from glsim.cost.measure import format_rows, median_ratio, timed_seconds
from glsim.errors import CommandError
from glsim.models.attention import attention_rollout, maws_scores, psm_scores
from glsim.models.backbone import create_vit
from glsim.models.dfsm import num_tokens
from glsim.models.gls import global_local_similarity

TIMED_DFSMS = ("gls", "rollout", "psm", "maws")


def dfsm_calls(
    setting: dict[str, Any], *, image_size: int, batch_size: int, device: torch.device
) -> tuple[dict[str, Callable[[], object]], dict[str, int]]:
    """One call per DFSM on random inputs of its model's shapes, and the token counts."""
    patch, depth, heads, dim = (setting[k] for k in ("patch_size", "depth", "heads", "dim"))
    tokens = num_tokens(image_size, patch)  # T = 1 + N
    psm_tokens = num_tokens(image_size, patch, patch - 4)  # TransFG's overlapping patches
    gen = torch.Generator().manual_seed(0)

    def stochastic(t: int) -> torch.Tensor:  # (B, H, t, t), rows sum to 1
        return torch.rand(batch_size, heads, t, t, generator=gen).softmax(dim=-1).to(device)

    features = torch.randn(batch_size, tokens, dim, generator=gen).to(device)  # (B, 1+N, D)
    maps, psm_maps = stochastic(tokens), stochastic(psm_tokens)
    logits = torch.randn(batch_size, heads, tokens, tokens, generator=gen).to(device)
    calls = {
        "gls": lambda: global_local_similarity(features),
        "rollout": lambda: attention_rollout([maps] * depth),
        "psm": lambda: psm_scores([psm_maps] * (depth - 1)),
        "maws": lambda: [maws_scores(logits) for _ in range(depth - 1)],
    }
    return calls, {"tokens": tokens, "psm_tokens": psm_tokens}


def time_rows(
    model: str,
    image_sizes: list[int],
    *,
    overrides: dict[str, Any] | None = None,
    batch_size: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    min_time: float = 0.5,
    num_classes: int = 200,
    device: torch.device | None = None,
) -> list[dict[str, Any]]:
    """One row per image size: the backbone forward's and each DFSM's median ms per call
    (``backbone_ms``, ``<dfsm>_ms``) and ``<dfsm>_ratio`` (see the module docstring)."""
    device = device or torch.device("cpu")
    if batch_size < 1 or repeats < 1 or warmup < 0 or min_time < 0:
        raise CommandError(
            f"--batch-size {batch_size}, --repeats {repeats}, --warmup {warmup}, "
            f"--min-time {min_time}: batch size and repeats must be >= 1, the others >= 0"
        )
    rows = []
    for size in image_sizes:
        try:
            vit = create_vit(model, image_size=size, num_classes=num_classes, **(overrides or {}))
            setting = model_setting(vit)
            calls, counts = dfsm_calls(
                setting, image_size=size, batch_size=batch_size, device=device
            )
        except ValueError as err:  # timm cannot build it, or an image smaller than a patch
            raise CommandError(f"--model {model!r} at --image-size {size}: {err}") from None
        vit = vit.eval().to(device)
        images = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
        images = images.to(device)
        calls = {"backbone": lambda vit=vit, images=images: vit(images), **calls}
        seconds: dict[str, list[float]] = {name: [] for name in calls}
        with torch.inference_mode():
            for fn in calls.values():  # warm-up: allocator, oneDNN kernels, lazy init
                for _ in range(warmup):
                    fn()
            for _ in range(repeats):
                for name, fn in calls.items():  # interleaved: backbone, gls, rollout, ...
                    seconds[name].append(timed_seconds(fn, min_time=min_time, device=device))
        row: dict[str, Any] = {
            "model": model,
            "image_size": size,
            "batch_size": batch_size,
            "device": device.type,
            "threads": torch.get_num_threads(),
            "repeats": repeats,
            **{k: setting[k] for k in ("patch_size", "depth", "heads", "dim")},
            **counts,
            "backbone_ms": 1e3 * statistics.median(seconds["backbone"]),
        }
        for name in TIMED_DFSMS:
            row[f"{name}_ms"] = 1e3 * statistics.median(seconds[name])
            row[f"{name}_ratio"] = median_ratio(seconds["backbone"], seconds[name])
        rows.append(row)
        del vit, images, calls
    return rows


def format_time(rows: list[dict[str, Any]], fmt: str) -> str:
    """``rows`` of :func:`time_rows` as ``json``, ``csv`` or a ``text`` table."""
    if fmt != "text":
        return format_rows(rows, fmt)
    r0 = rows[0]
    lines = [
        f"{r0['model']} (P {r0['patch_size']}, L {r0['depth']}, H {r0['heads']}, D {r0['dim']}) "
        f"on {r0['device']}, {r0['threads']} threads, batch {r0['batch_size']}: median ms per "
        f"call over {r0['repeats']} interleaved repeats, and DFSM / backbone forward",
        f"{'size':>5} {'backbone ms':>12}" + "".join(f" {n:>22}" for n in TIMED_DFSMS),
    ]
    for r in rows:
        cells = "".join(f" {r[f'{n}_ms']:>11.4g} {r[f'{n}_ratio']:>9.3g}x" for n in TIMED_DFSMS)
        lines.append(f"{r['image_size']:>5} {r['backbone_ms']:>12.5g}{cells}")
    return "\n".join(lines)
