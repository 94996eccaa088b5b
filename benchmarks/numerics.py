"""What ``base.numerics: portable`` costs and whether it holds: training-step time of ViT and
GLSim at the default size (params.yaml) under ``native`` (the precision ``train.cpu_amp:
auto`` picks here) against ``portable``, and the digest of a tiny pretrain + fine-tune
(tests/repro_run.py) under ``portable`` with the host's own settings in the environment.

The CPU code paths are read when torch loads, so every setting runs in a fresh process; the
settings alternate round by round, and each figure is the minimum over rounds of a
process's median step (load beside the run inflates the minimum least).

    .venv/bin/python benchmarks/numerics.py                  # steps at base.num_threads, 3 rounds
    .venv/bin/python benchmarks/numerics.py --threads 1 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# name: (environment, bf16 autocast; None = as train.cpu_amp: auto resolves here)
SETTINGS = {
    "native (auto)": ({}, None),
    "native fp32": ({}, False),
    "portable (MKL_CBWR=COMPATIBLE)": ({**PINS, "MKL_CBWR": "COMPATIBLE"}, False),
    "pins, MKL_CBWR=AVX2": ({**PINS, "MKL_CBWR": "AVX2"}, False),
}
# the host's own settings a portable run must refuse or override (a user's, or another
# host's defaults written out)
HOST_ENVS = {
    "plain": {},
    "pins already set": {**PINS, "MKL_CBWR": "COMPATIBLE"},
    "ONEDNN_MAX_CPU_ISA=AVX512_CORE_AMX": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"},
    "ATEN_CPU_CAPABILITY=avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
    "MKL_CBWR=AUTO": {"MKL_CBWR": "AUTO"},
    "OMP_NUM_THREADS=2 MKL_DYNAMIC=TRUE": {"OMP_NUM_THREADS": "2", "MKL_DYNAMIC": "TRUE"},
}
ALL_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")


def worker(params_file: str, threads: int, bf16_arg: str, steps: int) -> None:
    """One process: median step time of ViT and GLSim (printed as one JSON line)."""
    import statistics
    import time

    import torch
    from torch import nn

    import glsim  # noqa: F401  (the MKL/OpenMP switches before torch loads, as in a stage)
    from glsim.config import load_params
    from glsim.models import create_model
    from glsim.runs import execution_settings
    from glsim.train.loop import train_step
    from glsim.train.run import model_kwargs
    from glsim.utils import set_threads

    params = load_params(params_file)
    set_threads(threads)
    bf16 = (
        execution_settings(params)["precision"] == "bf16" if bf16_arg == "auto" else bf16_arg == "1"
    )
    size, batch = params.data.image_size, params.train.batch_size
    out = {"capability": torch.backends.cpu.get_cpu_capability(), "bf16": bf16}
    for name in ("vit", "glsim"):
        torch.manual_seed(0)
        kwargs = {**model_kwargs(params, name), "weights": None}
        model = create_model(name, num_classes=200, image_size=size, **kwargs)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 200, (batch,))
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        times = []
        for i in range(steps + 2):  # two warm-up steps
            t0 = time.perf_counter()
            train_step(
                model, images, labels, optimizer=optimizer, criterion=criterion, scaler=None,
                clip_grad=1.0, use_amp=bf16, device_type="cpu", amp_dtype=torch.bfloat16,
            )  # fmt: skip
            if i >= 2:
                times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    print(json.dumps(out))


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ALL_VARS}
    env.update(extra, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    return env


def step_times(params_file: str, threads: int, rounds: int, steps: int) -> None:
    best: dict[str, dict[str, float]] = {}
    for r in range(rounds):
        for name, (env, bf16) in SETTINGS.items():
            flag = "auto" if bf16 is None else str(int(bf16))
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                params_file,
                str(threads),
                flag,
                str(steps),
            ]
            proc = subprocess.run(cmd, env=clean_env(env), capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(proc.stderr[-2000:])
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            row = best.setdefault(name, {"capability": res["capability"], "bf16": res["bf16"]})
            for model in ("vit", "glsim"):
                row[model] = min(row.get(model, float("inf")), res[model])
            print(
                f"round {r + 1} {name:32s} vit {res['vit'] * 1e3:6.0f} ms  glsim {res['glsim'] * 1e3:6.0f} ms",
                flush=True,
            )
    base = best["native (auto)"]
    print(
        f"\nstep time, min over {rounds} rounds of each process's median of {steps} steps, {threads} thread(s):"
    )
    for name, row in best.items():
        print(
            f"{name:32s} {row['capability']:6s} bf16={row['bf16']!s:5s} "
            f"vit {row['vit'] * 1e3:6.0f} ms ({row['vit'] / base['vit']:.2f}x)  "
            f"glsim {row['glsim'] * 1e3:6.0f} ms ({row['glsim'] / base['glsim']:.2f}x)"
        )


def digests() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_params

    from glsim.protocol.data import prepare, shard

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        params = tiny_params(data)
        prepare(params)
        shard(params)
        runs = [("portable", n, e) for n, e in HOST_ENVS.items()] + [("native", "plain", {})]
        print(
            "\ntiny pretrain + fine-tune (tests/repro_run.py, 1 thread): fine-tuned weights' sha256"
        )
        for i, (profile, name, env) in enumerate(runs):
            cmd = [
                sys.executable,
                str(ROOT / "tests/repro_run.py"),
                tmp,
                f"{tmp}/out{i}",
                "1",
                profile,
            ]
            proc = subprocess.run(cmd, env=clean_env(env), capture_output=True, text=True)
            if proc.returncode:
                line = proc.stderr.strip().splitlines()[-1]
                print(f"{profile:8s} {name:36s} refused: {line[:160]}")
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{profile:8s} {name:36s} {res['capability']:6s} model {res['model'][:16]}  backbone {res['backbone'][:16]}"
            )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--threads", type=int, default=None, help="default: base.num_threads")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--skip-steps", action="store_true")
    args = ap.parse_args()
    from glsim.config import load_params

    threads = args.threads or load_params(args.params).base.num_threads
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    print(f"CPU: {cpu}; load average {os.getloadavg()[0]:.1f}")
    if not args.skip_steps:
        step_times(args.params, threads, args.rounds, args.steps)
    digests()


if __name__ == "__main__":
    main()
