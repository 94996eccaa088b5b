"""Ablation rows outside the main job: named variants of a config file's ``ablations``
section, trained and evaluated with the given seeds at their model's searched LR, beside the
main run of their model; mean, std and the difference to the main run per row.

    .venv/bin/python benchmarks/variant_rows.py --config configs/paper-ablations.yaml \\
        --variants glsim_half_pixel_crop glsim_no_token_drop glsim_no_aggregator_drop_path \\
        glsim_unregularised

Runs go to ``runs/extra/`` and reports to ``reports/extra/`` (keyed and resumable, apart from
the main pipeline's folders, whose DVC outputs they would otherwise change). Needs the main
pipeline's shards, backbone, LR search and results (``make repro``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from glsim.config import params_parser

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[params_parser()])
    ap.add_argument("--config", type=Path, required=True, help="a file with an ablations section")
    ap.add_argument("--variants", nargs="+", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", help="default: protocol.seeds")
    ap.add_argument("--out", type=Path, help="summary json (default: reports/extra/<config>.json)")
    args = ap.parse_args()

    from glsim.config import AblationParams, load_params, params_of_args, parse_sets
    from glsim.protocol.evaluate import evaluate_run
    from glsim.protocol.specs import chosen_lr, variant_params
    from glsim.runs import RunSpec
    from glsim.train.run import train_run
    from glsim.utils import atomic_write_json

    main_params = params_of_args(args)
    ablations = AblationParams.model_validate(yaml.safe_load(args.config.read_text())["ablations"])
    params = load_params(
        args.params,
        parse_sets([
            *args.set,
            f"base.runs_dir={main_params.base.runs_dir / 'extra'}",
            f"base.reports_dir={main_params.base.reports_dir / 'extra'}",
        ]),
    )  # fmt: skip
    params = params.model_copy(update={"ablations": ablations})
    seeds = args.seeds or list(main_params.protocol.seeds)
    results = json.loads((main_params.base.reports_dir / "results.json").read_text())
    main_rows = results[main_params.data.dataset]
    out: dict = {"config": str(args.config), "seeds": seeds, "rows": {}}
    for name in args.variants:
        model = ablations.variants[name].model
        lr = chosen_lr(main_params, model)  # the main pipeline's LR search
        vparams = variant_params(params, name)
        top1 = []
        for seed in seeds:
            spec = RunSpec(model=model, seed=seed, lr=lr, kind="ablation", variant=name)
            train_run(vparams, spec, track=False)
            top1.append(evaluate_run(vparams, spec, track=False)["top1"])
            print(f"{name} seed {seed}: top-1 {top1[-1]:.2f}", flush=True)
        ref = main_rows[model]
        row = {
            "model": model, "set": ablations.variants[name].set, "lr": lr, "top1": top1,
            "mean": statistics.fmean(top1), "std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
            "main_mean": ref["top1_mean"], "main_std": ref["top1_std"],
        }  # fmt: skip
        row["diff"] = row["mean"] - row["main_mean"]
        row["beyond_std_sum"] = abs(row["diff"]) > row["std"] + row["main_std"]
        out["rows"][name] = row
        print(
            f"{name}: {row['mean']:.2f} ± {row['std']:.2f} against {model} {row['main_mean']:.2f} "
            f"± {row['main_std']:.2f}: {row['diff']:+.2f} "
            f"({'beyond' if row['beyond_std_sum'] else 'inside'} the sum of the stds)",
            flush=True,
        )
    path = args.out or main_params.base.reports_dir / "extra" / f"{args.config.stem}.json"
    atomic_write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
