"""Does bfloat16 autocast on the CPU (``train.cpu_amp``) change the built-in run's accuracy?
The final runs of each model at its searched LR, trained in float32 and in bf16 with every
seed given, side by side; mean, std and Welch's t per model.

    .venv/bin/python benchmarks/precision_accuracy.py --models vit --seeds 1 10 100 1000 2000 3000

Runs go to ``runs/precision/<fp32|bf16>/`` and reports to ``reports/precision/<fp32|bf16>/``
(keyed and resumable, apart from the main pipeline's folders; a bf16 run of a default seed
repeats that final run bit for bit); the summary to ``reports/precision/summary.json``. Needs the main pipeline's shards, backbone and LR search (``make repro``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def welch_t(a: list[float], b: list[float]) -> float:
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    return (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb) if va + vb else 0.0


def main() -> None:
    from glsim.config import params_parser

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[params_parser()])
    ap.add_argument("--models", nargs="+", default=["vit"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 10, 100, 1000, 2000, 3000])
    args = ap.parse_args()

    from glsim.config import load_params, params_of_args, parse_sets
    from glsim.protocol.evaluate import evaluate_run
    from glsim.protocol.specs import chosen_lr
    from glsim.runs import RunSpec
    from glsim.train.run import train_run
    from glsim.utils import atomic_write_json, cpu_has_native_bf16

    if not cpu_has_native_bf16():
        raise SystemExit("error: this CPU has no native bf16; train.cpu_amp: auto trains float32 here")
    main_params = params_of_args(args)
    out = {"seeds": args.seeds, "models": {}}
    for model in args.models:
        lr = chosen_lr(main_params, model)  # the main pipeline's LR search
        top1: dict[str, list[float]] = {}
        for precision, amp in (("fp32", "off"), ("bf16", "bf16")):
            params = load_params(
                args.params,
                parse_sets([
                    *args.set,
                    f"train.cpu_amp={amp}",
                    f"base.runs_dir={main_params.base.runs_dir / 'precision' / precision}",
                    f"base.reports_dir={main_params.base.reports_dir / 'precision' / precision}",
                ]),
            )  # fmt: skip
            for seed in args.seeds:
                spec = RunSpec(model=model, seed=seed, lr=lr)
                train_run(params, spec, track=False)
                report = evaluate_run(params, spec, track=False)
                top1.setdefault(precision, []).append(report["top1"])
                print(f"{model} {precision} seed {seed}: top-1 {report['top1']:.2f}", flush=True)
        row = {
            "lr": lr,
            **{f"{p}_top1": v for p, v in top1.items()},
            **{f"{p}_mean": statistics.fmean(v) for p, v in top1.items()},
            **{f"{p}_std": statistics.stdev(v) for p, v in top1.items()},
            "welch_t_fp32_minus_bf16": welch_t(top1["fp32"], top1["bf16"]),
        }
        out["models"][model] = row
        print(
            f"{model}: fp32 {row['fp32_mean']:.2f} ± {row['fp32_std']:.2f}  "
            f"bf16 {row['bf16_mean']:.2f} ± {row['bf16_std']:.2f}  "
            f"Welch t {row['welch_t_fp32_minus_bf16']:.2f} ({len(args.seeds)} seeds each)",
            flush=True,
        )
    path = main_params.base.reports_dir / "precision" / "summary.json"
    atomic_write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
