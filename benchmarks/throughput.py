"""GLSim vs ViT on this machine: inference throughput and training step time, side by side.

Both models are built by :func:`glsim.models.create_model` on the same backbone (by default
``model.backbone`` of ``params.yaml`` at ``data.image_size``, random weights) and measured
interleaved (for every repeat and batch size: ViT, then GLSim) after a warm-up, so drift
in machine load hits both alike. Inference is ``glsim cost bench``'s throughput pass
(:func:`glsim.cost.bench.throughput_pass`; that command adds peak memory, more models and
plots). Reports, per model, inference images/s at each batch size
and the best batch size (as the paper reports throughput), the time of one training step
(:func:`glsim.train.loop.train_step`, the step ``fit`` takes: forward + loss + backward +
SGD step, here without AMP and clipping) at the training batch size, and the GLSim/ViT
ratios: the median over repeats of the paired per-repeat ratios.

    .venv/bin/python benchmarks/throughput.py                       # params.yaml backbone
    .venv/bin/python benchmarks/throughput.py --backbone vit_base_patch16_224 --image-size 224 \\
        --batch-sizes 1,8,32 --train-batch-size 8 --threads 2 --json reports/throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glsim.config import BackboneParams, Params, params_of_args, params_parser
from glsim.cost.bench import best_per_repeat, model_kwargs_for, throughput_pass
from glsim.cost.measure import median_ratio, timed_rate
from glsim.models import create_model
from glsim.train.loop import train_step
from glsim.train.run import CNN_MODELS


def train_step_fn(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step() -> None:
        train_step(
            model, images, labels, optimizer=optimizer, criterion=criterion, scaler=None,
            clip_grad=None, use_amp=False, device_type=images.device.type,
        )  # fmt: skip

    return step


def build(
    name: str, args: argparse.Namespace, params: Params, backbone: BackboneParams
) -> nn.Module:
    """A registered model with params.yaml's per-model section (e.g. ``model.glsim``), random
    weights, and ``backbone`` for the ViT-based ones."""
    with_backbone = params.model_copy(deep=True)
    with_backbone.model.backbone = backbone  # replaced, not merged: --backbone drops overrides
    drop_path = 0.0 if name in CNN_MODELS else args.drop_path
    kwargs = model_kwargs_for(with_backbone, name, drop_path_rate=drop_path)
    torch.manual_seed(0)
    return create_model(name, num_classes=args.num_classes, image_size=args.image_size, **kwargs)


def measure(args: argparse.Namespace, params: Params, backbone: BackboneParams) -> dict[str, Any]:
    models = {name: build(name, args, params, backbone) for name in args.models}
    gen = torch.Generator().manual_seed(0)
    size = (3, args.image_size, args.image_size)
    train_images = torch.randn(args.train_batch_size, *size, generator=gen)
    train_labels = torch.randint(0, args.num_classes, (args.train_batch_size,), generator=gen)

    infer = throughput_pass(
        models, {m: list(args.batch_sizes) for m in models}, image_size=args.image_size,
        repeats=args.repeats, warmup=args.warmup, min_time=args.min_time,
        progress=lambda line: print(line, flush=True),
    )  # fmt: skip
    step_s: dict[str, list[float]] = {m: [] for m in models}

    for model in models.values():
        model.train()
    steps = {m: train_step_fn(models[m], train_images, train_labels) for m in models}
    for fn in steps.values():
        for _ in range(args.warmup):
            fn()
    for repeat in range(args.repeats):
        for m in models:
            step_s[m].append(1.0 / timed_rate(steps[m], items=1, min_time=args.min_time))
        print(f"training repeat {repeat + 1}/{args.repeats} done", flush=True)

    result: dict[str, Any] = {"inference_images_per_s": {}, "train_step_s": {}, "ratios": {}}
    for m in models:
        medians = {b: statistics.median(v) for b, v in infer[m].items()}
        best = max(medians, key=medians.__getitem__)
        result["inference_images_per_s"][m] = {
            "per_batch_median": medians,
            "per_batch_repeats": infer[m],
            "best_batch_size": best,
            "best": medians[best],
        }
        result["train_step_s"][m] = {"median": statistics.median(step_s[m]), "repeats": step_s[m]}
    if "vit" in models and "glsim" in models:
        iv, ig = infer["vit"], infer["glsim"]
        best_v, best_g = best_per_repeat(iv), best_per_repeat(ig)
        result["ratios"] = {
            "inference_per_batch_glsim_over_vit": {
                b: median_ratio(iv[b], ig[b]) for b in args.batch_sizes
            },
            "inference_best_glsim_over_vit": median_ratio(best_v, best_g),
            "train_step_time_glsim_over_vit": median_ratio(step_s["vit"], step_s["glsim"]),
        }
    return result


def print_report(result: dict[str, Any], env: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(
        f"torch {env['torch']} | threads {env['threads']} | {env['backbone']} {env['overrides'] or ''} "
        f"@ {args.image_size}px | repeats {args.repeats} x >= {args.min_time}s, warm-up {args.warmup}"
    )
    inf = result["inference_images_per_s"]
    models = list(inf)
    header = f"{'inference images/s (median)':<30}" + "".join(f"{m:>12}" for m in models)
    ratios = result["ratios"]
    if ratios:
        header += f"{'glsim/vit':>12}"
    print(header)
    for b in args.batch_sizes:
        line = f"{'batch ' + str(b):<30}" + "".join(
            f"{inf[m]['per_batch_median'][b]:>12.1f}" for m in models
        )
        if ratios:
            line += f"{ratios['inference_per_batch_glsim_over_vit'][b]:>12.3f}"
        print(line)
    line = f"{'best (batch size)':<30}" + "".join(
        f"{inf[m]['best']:>7.1f} ({inf[m]['best_batch_size']:>2})" for m in models
    )
    if ratios:
        line += f"{ratios['inference_best_glsim_over_vit']:>12.3f}"
    print(line)
    steps = result["train_step_s"]
    line = f"{'train step s @ batch ' + str(args.train_batch_size):<30}" + "".join(
        f"{steps[m]['median']:>12.4f}" for m in models
    )
    if ratios:
        line += f"{ratios['train_step_time_glsim_over_vit']:>12.3f}"
    print(line)
    if ratios:
        print(
            "ratios: median over repeats of paired GLSim/ViT ratios (throughput: >1 GLSim faster; step time: >1 GLSim slower)"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[params_parser()])
    parser.add_argument(
        "--backbone",
        help="timm model name (default: params.yaml model.backbone, with its overrides)",
    )
    parser.add_argument("--image-size", type=int, help="default: params.yaml data.image_size")
    parser.add_argument(
        "--batch-sizes", default="1,8,32,64", help="comma-separated inference batch sizes"
    )
    parser.add_argument(
        "--train-batch-size", type=int, help="default: params.yaml train.batch_size"
    )
    parser.add_argument("--models", default="vit,glsim")
    parser.add_argument("--num-classes", type=int, default=200)
    parser.add_argument("--drop-path", type=float, help="default: what train.augreg switches on")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed calls per model and batch size"
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=1.0,
        help="seconds per timed measurement (at least one call)",
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.models = [m for m in args.models.split(",") if m]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = params_of_args(args)
    if args.backbone:
        backbone = BackboneParams(name=args.backbone, weights=None)
    else:
        backbone = params.model.backbone.model_copy(update={"weights": None})
    args.image_size = args.image_size or params.data.image_size
    args.train_batch_size = args.train_batch_size or params.train.batch_size
    if args.drop_path is None:
        args.drop_path = params.train.regularisation().drop_path
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "backbone": backbone.name,
        "overrides": backbone.overrides,
        "glsim": params.model.glsim.model_dump(mode="json"),
    }
    result = measure(args, params, backbone)
    print_report(result, env, args)
    if args.json:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"env": env, "settings": settings, **result}, indent=2) + "\n"
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
