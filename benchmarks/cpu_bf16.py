"""Training-step time with bfloat16 autocast on the CPU against float32 (``train.cpu_amp``),
for ViT and GLSim, measured side by side: the two settings alternate step by step on the
same model, batch and optimiser, and each ratio is of medians.

    .venv/bin/python benchmarks/cpu_bf16.py                       # params.yaml's backbone and size
    .venv/bin/python benchmarks/cpu_bf16.py --vit-s16-224         # ViT-S/16 at 224, batch 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from glsim.config import params_of_args, params_parser
from glsim.train.loop import train_step
from glsim.train.run import model_kwargs
from glsim.utils import cpu_has_native_bf16, set_threads


def step(run: tuple, bf16: bool) -> float:
    """Seconds of one training step (the loop's own ``train_step``), bf16 or float32."""
    model, images, labels, optimizer, criterion = run
    t0 = time.perf_counter()
    train_step(
        model, images, labels, optimizer=optimizer, criterion=criterion, scaler=None,
        clip_grad=1.0, use_amp=bf16, device_type="cpu", amp_dtype=torch.bfloat16,
    )  # fmt: skip
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[params_parser()])
    ap.add_argument("--vit-s16-224", action="store_true")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=None)
    args = ap.parse_args()
    from glsim.models import create_model

    params = params_of_args(args)
    set_threads(params.base.num_threads)
    size, batch = params.data.image_size, args.batch or params.train.batch_size
    print(f"native bf16: {cpu_has_native_bf16()}, threads {torch.get_num_threads()}")
    for name in ("vit", "glsim"):
        kwargs = {**model_kwargs(params, name), "weights": None}
        if args.vit_s16_224:
            kwargs.update(backbone="vit_small_patch16_224", backbone_overrides={})
            size = 224
        torch.manual_seed(0)
        model = create_model(name, num_classes=200, image_size=size, **kwargs)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 200, (batch,))
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

        run = (model, images, labels, optimizer, criterion)
        step(run, False), step(run, True)  # warm-up
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for bf16 in (False, True):
                times[bf16].append(step(run, bf16))
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        print(
            f"{name:6s} {size}px batch {batch}: fp32 {fp32 * 1e3:7.0f} ms  bf16 {bf16 * 1e3:7.0f} ms"
            f"  fp32/bf16 {fp32 / bf16:.2f}x"
        )


if __name__ == "__main__":
    main()
