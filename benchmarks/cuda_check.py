"""The CUDA paths in one run, for a machine with a GPU (CI has none): fine-tuning with
float16 autocast and a gradient scaler, the pinned-memory loader, resumption, evaluation,
torchrun with NCCL, training-step time per precision, and the cost benchmark.

    python benchmarks/cuda_check.py --out OUT            # every part, ~4 min on one H100
    python benchmarks/cuda_check.py --out OUT --device cpu --small   # the same code on a CPU

Parts (each prints one ``== part`` header and its figures, and adds them to
``OUT/cuda_check.json``; a part that fails prints its error and the next one runs):

1. ``train``: the pipeline's own ``prepare``, ``shard``, ``train_run`` and ``evaluate_run``
   on a generated 64-class set (its most) at 224 px with ViT-B/16 (random init, 2 epochs) for vit and
   glsim, ``data.workers`` loader processes (pinned memory on CUDA); then a glsim run stopped
   after epoch 1 and resumed, whose weights are compared with the uninterrupted run's
   (``base.deterministic``: bitwise on one GPU).
2. ``torchrun``: ``torchrun --standalone --nproc_per_node 1`` of the same training (NCCL on
   CUDA, gloo on CPU) with the DDP path forced on for the one rank (the process group,
   DistributedDataParallel, all-reduced metrics, barriers; NCCL refuses two ranks on one
   GPU, so more than one rank needs more GPUs).
3. ``step``: one training step (the loop's ``train_step``) in float32, float16 autocast +
   GradScaler and bfloat16 autocast, alternating per repeat on one model and batch; medians
   and ratios, for vit and glsim at ViT-B/16 224.
4. ``compile``: a training step through ``torch.compile`` of the loop's forward+loss against
   eager, alternating per repeat, and the first (compiling) step's time; ``--params FILE``
   takes that file's backbone, image size and batch (on a CPU: the built-in run's).
5. ``cost``: ``glsim cost bench`` (throughput and peak ``max_memory_reserved`` per batch) and
   ``glsim cost time`` (DFSM time beside the forward) on the device.
6. ``loop``: the project's own training loop against the bare step, at 224 and 448 for vit
   and glsim (ViT-B/16, float16 autocast as ``train.amp``): ``train_run`` over a 64-class
   ``csv:`` dataset of 500 x 375 JPEGs (a fine-grained dataset's typical size), the default
   strong AugReg and ``--workers`` loader processes (default: the cores but one), 2 epochs;
   its images/s in epoch 2 beside the bare ``train_step`` on one resident batch of the same
   size, and their ratio (the loader keeps up when it is near 1).

Before a GPU session, dry-run every part on the CPU:
``python benchmarks/cuda_check.py --out /tmp/cc --device cpu --small``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


TINY_VIT = {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}  # tests/tiny.py's


def bench_model(small: bool) -> tuple[int, int, dict]:
    """Image size, batch and ``create_model`` backbone arguments of every part: ViT-B/16 at
    224 with batch 64, or (``--small``, a CPU smoke run) the tests' tiny ViT at 32."""
    if small:
        return 32, 8, {"backbone": "vit_tiny_patch16_224", "backbone_overrides": dict(TINY_VIT)}
    return 224, 64, {"backbone": "vit_base_patch16_224", "backbone_overrides": {}}


def log(msg: str) -> None:
    print(msg, flush=True)


def check_params(out: Path, device: str, small: bool, **train):
    from glsim.config import Params

    size, _, kw = bench_model(small)
    vit = {"name": kw["backbone"], "overrides": kw["backbone_overrides"]}
    synthetic = (
        {"num_classes": 12, "train_per_class": 4, "test_per_class": 2, "canvas_size": 43, "object_size": [8, 12]}
        if small
        else {"num_classes": 64, "train_per_class": 16, "test_per_class": 4, "canvas_size": 300, "object_size": [50, 80]}
    )  # fmt: skip
    return Params.model_validate(
        {
            "base": {
                "device": device, "deterministic": True, "num_threads": 0 if device == "cuda" else 2,
                "reports_dir": str(out / "reports"), "runs_dir": str(out / "runs"),
            },
            "data": {
                "raw_dir": str(out / "data/raw"), "shards_dir": str(out / "data/shards"),
                "image_size": size, "workers": 0 if small else 6, "synthetic": synthetic,
            },
            "model": {"backbone": {**vit, "weights": None}},
            "pretrain": {"stages": []},
            "train": {"epochs": 2, "batch_size": 8 if small else 32, "warmup_steps": 5, **train},
            "eval": {"batch_size": 16 if small else 64},
        }
    )  # fmt: skip


def part_train(work: Path, device: str, small: bool) -> dict:
    from glsim.protocol.data import prepare, shard
    from glsim.protocol.evaluate import evaluate_run
    from glsim.runs import RunSpec
    from glsim.train.checkpoint import read_checkpoint
    from glsim.train.run import train_run

    params = check_params(work, device, small)
    t0 = time.perf_counter()
    prepare(params)
    shard(params)
    res: dict = {"prepare_shard_s": round(time.perf_counter() - t0, 1)}
    log(f"prepare+shard: {res['prepare_shard_s']} s")
    for model in ("vit", "glsim"):
        spec = RunSpec(model, 1, lr=0.01)
        t0 = time.perf_counter()
        run_dir = train_run(params, spec, track=False)
        seconds = time.perf_counter() - t0
        hist = json.loads((run_dir / "train.json").read_text())["history"]
        state = read_checkpoint(run_dir / "last.pt")
        report = evaluate_run(params, spec, track=False)
        row = {
            "train_s": round(seconds, 1),
            "loss": [round(h["train/loss"], 4) for h in hist],
            "scaler_in_checkpoint": state.get("scaler") is not None,
            "top1": report.get("top1"),
        }
        res[model] = row
        log(f"{model}: {row}")
    # resumption: stop after epoch 1, resume, compare with the uninterrupted run's weights
    base = params.base.model_copy(
        update={"runs_dir": work / "resume/runs", "reports_dir": work / "resume/reports"}
    )
    stopped = params.model_copy(update={"base": base})  # the same shards, another run folder
    spec = RunSpec("glsim", 1, lr=0.01)
    train_run(stopped, spec, track=False, stop_after_epochs=1)
    train_run(stopped, spec, track=False)
    a = read_checkpoint(spec.run_dir(params) / "last.pt")["model"]
    b = read_checkpoint(spec.run_dir(stopped) / "last.pt")["model"]
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    res["resume_max_abs_diff"] = diff
    log(f"resumed glsim vs uninterrupted: max |dw| = {diff:.3g}")
    return res


def part_torchrun(work: Path, device: str, small: bool) -> dict:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        str(Path(__file__).resolve()), "--worker", "--out", str(work), "--device", device,
    ] + (["--small"] if small else [])  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    tail = (proc.stdout + proc.stderr)[-3000:]
    log(tail)
    line = [x for x in proc.stdout.splitlines() if x.startswith("WORKER ")]
    return {
        "rc": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "worker": json.loads(line[-1][7:]) if line else None,
    }


def torchrun_worker(work: Path, device: str, small: bool) -> None:
    import torch.distributed as tdist

    from glsim.runs import RunSpec
    from glsim.train import distributed
    from glsim.train.run import train_run

    class Forced(distributed.Dist):
        """DDP with however many ranks torchrun started, one included: a machine with one
        GPU can still run the NCCL group, DDP and the all-reduced metrics (NCCL refuses two
        ranks on one GPU)."""

        @property
        def enabled(self) -> bool:
            return True

    env = distributed.from_env()
    distributed.from_env = lambda: Forced(env.rank, env.world_size, env.local_rank)

    params = check_params(work / "train", device, small)  # the shards the train part wrote
    base = params.base.model_copy(
        update={"runs_dir": work / "torchrun/runs", "reports_dir": work / "torchrun/reports"}
    )
    params = params.model_copy(update={"base": base})
    run_dir = train_run(params, RunSpec("glsim", 2, lr=0.01), track=False)
    if int(os.environ.get("RANK", "0")) == 0:
        hist = json.loads((run_dir / "train.json").read_text())["history"]
        info = {
            "backend": tdist.get_backend() if tdist.is_initialized() else None,
            "world_size": tdist.get_world_size() if tdist.is_initialized() else 1,
            "loss": [round(h["train/loss"], 4) for h in hist],
        }
        print("WORKER " + json.dumps(info), flush=True)
    distributed.teardown()


def timed_step(run: tuple, dev: torch.device, mode: dict) -> float:
    """Seconds of one training step (the loop's own ``train_step``) in ``mode``."""
    from glsim.train.loop import train_step

    model, images, labels, opt, crit = run
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_step(
        model, images, labels, optimizer=opt, criterion=crit, clip_grad=1.0,
        device_type=dev.type, **mode,
    )  # fmt: skip
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def part_step(device: str, small: bool, repeats: int) -> dict:
    from glsim.models import create_model

    dev = torch.device(device)
    size, batch, kwargs = bench_model(small)
    res = {}
    for name in ("vit", "glsim"):
        torch.manual_seed(0)
        model = create_model(name, num_classes=200, image_size=size, weights=None, **kwargs).to(dev)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        images = torch.randn(batch, 3, size, size, device=dev)
        labels = torch.randint(0, 200, (batch,), device=dev)
        crit = nn.CrossEntropyLoss(label_smoothing=0.1)
        scaler = torch.amp.GradScaler("cuda") if dev.type == "cuda" else None
        modes = {
            "fp32": dict(use_amp=False, amp_dtype=torch.float32, scaler=None),
            "fp16_amp": dict(use_amp=True, amp_dtype=torch.float16, scaler=scaler),
            "bf16_amp": dict(use_amp=True, amp_dtype=torch.bfloat16, scaler=None),
        }
        if dev.type == "cpu":
            modes.pop("fp16_amp")

        run = (model, images, labels, opt, crit)
        for m in modes:  # warm-up (kernels, scaler)
            timed_step(run, dev, modes[m]), timed_step(run, dev, modes[m])
        times: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(repeats):
            for m in modes:
                times[m].append(timed_step(run, dev, modes[m]))
        med = {m: statistics.median(t) for m, t in times.items()}
        row = {f"{m}_ms": round(v * 1e3, 2) for m, v in med.items()}
        row.update(
            {f"fp32_over_{m}": round(med["fp32"] / v, 2) for m, v in med.items() if m != "fp32"}
        )
        row["images_per_s_best"] = round(batch / min(med.values()), 1)
        res[name] = row
        log(f"{name} batch {batch} at {size}: {row}")
        del model, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return res


def compiled_step(fn, params, images, labels, opt, dev: torch.device, dtype) -> float:
    """Seconds of one SGD step through ``fn`` (a :class:`LossForward`, compiled or not)."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss, _ = fn(images, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def part_compile(device: str, small: bool, repeats: int, params_file: Path | None) -> dict:
    """``torch.compile`` of the training forward+loss (the loop's :class:`LossForward`, which
    holds GLSim's own loss) against eager, alternating per repeat; compile time apart."""
    from glsim.models import create_model
    from glsim.train.loop import LossForward
    from glsim.utils import cpu_has_native_bf16

    dev = torch.device(device)
    if params_file is not None:  # a params file's backbone, size and batch (the CPU default)
        from glsim.config import load_params
        from glsim.train.run import model_kwargs

        p = load_params(params_file)
        from glsim.utils import set_threads

        set_threads(p.base.num_threads)
        size, batch = p.data.image_size, p.train.batch_size
        kwargs_for = lambda name: {**model_kwargs(p, name), "weights": None}  # noqa: E731
    else:
        size, batch, bb = bench_model(small)
        kwargs_for = lambda name: {**bb, "weights": None}  # noqa: E731
    dtype = torch.bfloat16 if dev.type == "cuda" or cpu_has_native_bf16() else None
    res = {"dtype": str(dtype), "size": size, "batch": batch}
    for name in ("vit", "glsim"):
        torch.manual_seed(0)
        model = create_model(name, num_classes=200, image_size=size, **kwargs_for(name)).to(dev)
        model.train()
        eager = LossForward(model, nn.CrossEntropyLoss(label_smoothing=0.1))
        compiled = torch.compile(eager)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        images = torch.randn(batch, 3, size, size, device=dev)
        labels = torch.randint(0, 200, (batch,), device=dev)
        args = (list(model.parameters()), images, labels, opt, dev, dtype)
        first = compiled_step(compiled, *args)  # compiles
        compiled_step(eager, *args), compiled_step(compiled, *args)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(repeats):
            times["eager"].append(compiled_step(eager, *args))
            times["compiled"].append(compiled_step(compiled, *args))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "first_compiled_step_s": round(first, 1),
            "eager_ms": round(med["eager"] * 1e3, 2),
            "compiled_ms": round(med["compiled"] * 1e3, 2),
            "eager_over_compiled": round(med["eager"] / med["compiled"], 3),
        }
        res[name] = row
        log(f"{name} batch {batch} at {size} ({dtype}): {row}")
        del model, eager, compiled, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return res


def part_cost(work: Path, device: str, small: bool) -> dict:
    out = work / "cost"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    sets = (
        ["--set", "model.backbone.name=vit_tiny_patch16_224"]
        if small
        else ["--set", "model.backbone.name=vit_base_patch16_224", "--set", "model.backbone.overrides={}"]
    )  # fmt: skip
    bench = [
        sys.executable, "-m", "glsim.cli", "cost", "bench", "--device", device,
        "--models", "vit", "glsim", "--image-size", "224", "--batch-sizes",
        *(["1", "4"] if small else ["1", "16", "64", "256"]),
        "--repeats", "2" if small else "3", "--amp", "--out", str(out), *sets,
        "--set", "model.backbone.weights=null", "--set", "pretrain.stages=[]",
        "--set", f"base.reports_dir={work / 'reports'}",  # no accuracies of another backbone
    ]  # fmt: skip
    timing = [
        sys.executable, "-m", "glsim.cli", "cost", "time", "--device", device,
        "--repeats", "2" if small else "5",
        *(["--model", "vit_tiny_patch16_224", "--image-size", "64"] if small else []),
    ]  # fmt: skip
    res = {}
    for name, cmd in (("bench", bench), ("time", timing)):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
        log(f"$ {' '.join(cmd[2:])}\n{(proc.stdout + proc.stderr)[-4000:]}")
        res[name] = {"rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 1)}
    csvs = sorted(out.glob("*.csv"))
    res["csv"] = [p.read_text() for p in csvs]
    return res


def jpeg_dataset(root: Path, small: bool) -> Path:
    """A ``csv:`` dataset of JPEGs (quality 90) from the built-in generator: 64 classes x 96
    train images of 500 x 375 (``--small``: 4 x 4 of 64 x 48); returns the CSV."""
    import pandas as pd
    from PIL import Image

    from glsim.config import SyntheticParams
    from glsim.data.synthetic import generate_fine_grained

    side, classes, per_class = (64, 4, 4) if small else (500, 64, 96)
    syn = SyntheticParams(
        num_classes=classes, train_per_class=per_class, test_per_class=2, canvas_size=side,
        object_size=(side // 6, side // 4), distractors=(1, 3),
    )  # fmt: skip
    manifest = generate_fine_grained(root / "png", syn)
    df = pd.read_csv(manifest)
    for rel in df["path"]:
        out = (root / "jpeg" / rel).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(root / "png" / rel) as image:
            image.convert("RGB").resize((side, side * 3 // 4)).save(out, quality=90)
    df["path"] = [str(Path(p).with_suffix(".jpg")) for p in df["path"]]
    df = df[["path", "label", "split", "class_name"]]  # boxes no longer match the 4:3 images
    df.to_csv(root / "jpeg/list.csv", index=False)
    return root / "jpeg/list.csv"


def bare_step_rate(name: str, size: int, batch: int, dev, kwargs: dict, repeats: int) -> float:
    """Images/s of the loop's ``train_step`` on one resident batch, in the loop's precision
    (float16 autocast + GradScaler on CUDA, bfloat16 autocast on a CPU)."""
    from glsim.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=64, image_size=size, weights=None, **kwargs)
    model = model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device=dev)
    run = (model, images, torch.randint(0, 64, (batch,), device=dev), opt, nn.CrossEntropyLoss())
    cuda = dev.type == "cuda"
    mode = dict(
        use_amp=True, amp_dtype=torch.float16 if cuda else torch.bfloat16,
        scaler=torch.amp.GradScaler("cuda") if cuda else None,
    )  # fmt: skip
    for _ in range(3):  # warm-up: kernels, the scaler's first steps
        timed_step(run, dev, mode)
    seconds = statistics.median(timed_step(run, dev, mode) for _ in range(repeats))
    del model, opt, run
    if cuda:
        torch.cuda.empty_cache()
    return batch / seconds


def part_loop(work: Path, device: str, small: bool, repeats: int, workers: int) -> dict:
    from glsim import protocol
    from glsim.config import for_dataset
    from glsim.data.loader import dataset_length
    from glsim.runs import RunSpec, shards_dir
    from glsim.train.run import train_run

    dev = torch.device(device)
    _, _, kwargs = bench_model(small)
    csv = jpeg_dataset(work / "source", small)
    res: dict = {"workers": workers}
    for size, batch in ((32, 8), (48, 4)) if small else ((224, 64), (448, 16)):
        params = check_params(work, device, small, batch_size=batch, amp=True).with_overrides(
            {
                "data.datasets": {"jpeg": {"source": f"csv:{csv}"}},
                "data.dataset": "jpeg",
                "data.image_size": size,
                "data.workers": workers,
                "base.deterministic": False,
                "base.runs_dir": str(work / f"runs-{size}"),
            }  # fmt: skip
        )
        params = for_dataset(params, "jpeg")
        if size == (32 if small else 224):
            protocol.prepare(params)
            protocol.shard(params)
        train_images = dataset_length(shards_dir(params), "train")
        for name in ("vit", "glsim"):
            run_dir = train_run(params, RunSpec(name, 1, lr=0.01), track=False)
            hist = json.loads((run_dir / "train.json").read_text())["history"]
            loop = train_images / hist[-1]["train/epoch_seconds"]  # the last epoch: workers warm
            bare = bare_step_rate(name, size, batch, dev, kwargs, repeats)
            row = {"loop_img_s": round(loop, 1), "bare_img_s": round(bare, 1),
                   "loop_over_bare": round(loop / bare, 2)}  # fmt: skip
            log(f"{name} at {size}, batch {batch}, {workers} workers: {row}")
            res[f"{name}_{size}"] = row
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the first paragraph
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--small", action="store_true", help="tiny sizes (a CPU smoke run)")
    ap.add_argument(
        "--parts", nargs="+", default=["loop", "train", "torchrun", "step", "compile", "cost"]
    )
    ap.add_argument(
        "--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
        help="loop part: loader processes (default: the cores but one)",
    )  # fmt: skip
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--params", type=Path, help="compile part: this params file's model sizes")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.out / "work"
    if args.worker:
        torchrun_worker(work, args.device, args.small)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name()
    log(json.dumps(result))
    for part in args.parts:
        log(f"== {part}")
        t0 = time.perf_counter()
        try:
            if part == "loop":
                result[part] = part_loop(
                    work / "loop", args.device, args.small, args.repeats, args.workers
                )
            elif part == "train":
                result[part] = part_train(work / "train", args.device, args.small)
            elif part == "torchrun":
                result[part] = part_torchrun(args.out, args.device, args.small)
            elif part == "step":
                result[part] = part_step(args.device, args.small, args.repeats)
            elif part == "compile":
                result[part] = part_compile(args.device, args.small, args.repeats, args.params)
            elif part == "cost":
                result[part] = part_cost(work, args.device, args.small)
        except Exception as exc:  # report and go on: one broken part must not hide the rest
            traceback.print_exc()
            result[part] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"== {part}: {time.perf_counter() - t0:.1f} s")
        (args.out / "cuda_check.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
