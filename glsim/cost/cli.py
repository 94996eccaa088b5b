"""``glsim cost flops | time | bench``: the cost of the feature selection mechanisms and of
the models, counted (flops) and measured on this machine (time, bench)."""

from __future__ import annotations

import argparse
from pathlib import Path

from glsim.config import params_parser
from glsim.errors import CommandError


def _fmt(args: argparse.Namespace) -> str:
    return "json" if args.json else "csv" if args.csv else "text"


def _device(name: str):
    from glsim.config import ParamsError
    from glsim.utils import resolve_device

    try:
        return resolve_device(name)
    except ParamsError as err:
        raise CommandError(str(err).replace("base.device", "--device")) from None


def cmd_flops(args: argparse.Namespace) -> int:
    from glsim.cost.flops import flops_rows, format_flops

    if args.num_classes < 0:
        raise CommandError("--num-classes must be >= 0")
    rows = flops_rows(args.model, args.image_size, num_classes=args.num_classes)
    print(format_flops(rows, _fmt(args)))
    return 0


def cmd_time(args: argparse.Namespace) -> int:
    from glsim.config import parse_sets
    from glsim.cost.timing import format_time, time_rows
    from glsim.utils import set_threads

    device = _device(args.device)
    set_threads(args.threads)
    overrides = parse_sets(args.override)
    rows = time_rows(
        args.model, args.image_size, overrides=overrides, batch_size=args.batch_size,
        repeats=args.repeats, warmup=args.warmup, min_time=args.min_time,
        num_classes=args.num_classes, device=device,
    )  # fmt: skip
    print(format_time(rows, _fmt(args)))
    return 0


def cmd_train_step(args: argparse.Namespace) -> int:
    """``glsim cost bench --train-step``: the training-step throughput table."""
    from glsim.config import params_of_args
    from glsim.cost.measure import format_rows
    from glsim.cost.train_step import train_step_rows, write_train_step
    from glsim.models import check_model_name
    from glsim.utils import set_threads

    params = params_of_args(args)
    cost = params.cost
    models = [check_model_name(m) for m in (args.models or cost.models)]
    sizes = args.image_size or [params.data.image_size]
    batches = args.batch_sizes or [params.train.batch_size]
    if min(sizes) < 1 or min(batches) < 1:
        raise CommandError("--image-size and --batch-sizes must be positive")
    device = _device(args.device or params.base.device)
    set_threads(args.threads if args.threads is not None else params.base.num_threads)
    quiet = args.json or args.csv
    rows = train_step_rows(
        params, models=models, image_sizes=sizes, batch_sizes=batches, device=device,
        repeats=args.repeats or cost.repeats, warmup=args.warmup if args.warmup is not None else 2,
        min_time=args.min_time if args.min_time is not None else cost.min_time,
        num_classes=cost.num_classes, progress=None if quiet else lambda line: print(line, flush=True),
    )  # fmt: skip
    path = write_train_step(rows, args.out or params.base.reports_dir / "cost")
    if quiet:
        print(format_rows(rows, _fmt(args)))
    else:
        print(f"wrote {path} (glsim plan --throughput {path})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from glsim.config import params_of_args
    from glsim.cost.report import format_bench
    from glsim.cost.stage import bench_settings, run_bench
    from glsim.runs import cost_files, results_paths
    from glsim.utils import set_threads

    if args.train_step:
        return cmd_train_step(args)
    params = params_of_args(args)
    chosen = {
        "models": args.models, "image_sizes": args.image_size, "batch_sizes": args.batch_sizes,
        "repeats": args.repeats, "warmup": args.warmup, "min_time": args.min_time,
        "amp": args.amp or None,
    }  # fmt: skip
    chosen = {f"cost.{k}": v for k, v in chosen.items() if v is not None}
    cost = params.with_overrides(chosen, source="glsim cost bench options").cost  # checked
    device = _device(args.device or params.base.device)
    threads = args.threads if args.threads is not None else params.base.num_threads
    set_threads(threads)
    results = args.results
    if results is None:
        default = results_paths(params)["json"]
        results = default if default.is_file() else None
    elif not results.is_file():
        raise CommandError(f"--results {results}: no such file (it is written by `dvc repro`)")
    out = args.out or params.base.reports_dir / "cost"
    rows, found = run_bench(
        params, bench_settings(cost, threads=threads), cost_files(out), device=device,
        results=results, dataset=args.dataset or params.data.dataset,
        progress=lambda line: print(line, flush=True) if not (args.json or args.csv) else None,
    )  # fmt: skip
    if args.json or args.csv:
        from glsim.cost.measure import format_rows

        print(format_rows(rows, _fmt(args)))
    else:
        print(format_bench(rows, found))
        written = [p for key, p in cost_files(out).items() if key != "time"]  # no timing here
        print("wrote " + ", ".join(map(str, written)))
    return 0


def _output_options(p: argparse.ArgumentParser) -> None:
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", action="store_true")


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
    _output_options(p)
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser(
        "time",
        help="DFSM wall time beside the backbone forward, measured here (Table 1, timed)",
        description="Median wall time of the backbone forward and of each implemented DFSM "
        "(gls, rollout, psm, maws) on inputs of its model's shapes, interleaved per repeat, "
        "and each DFSM's time over the forward's (median of paired ratios). Random weights.",
    )
    p.add_argument("--model", default="vit_base_patch16_224", help="a timm ViT name")
    p.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="a timm constructor argument, e.g. depth=2 (repeatable; values are YAML)",
    )  # fmt: skip
    p.add_argument("--image-size", type=int, nargs="+", default=[224, 448])
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls of each, per size")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds per timed measurement")
    p.add_argument("--num-classes", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    _output_options(p)
    p.set_defaults(func=cmd_time)

    p = sub.add_parser(
        "bench",
        help="inference throughput and peak memory per model and batch size (Figs. 4, 7)",
        description="Images/s and peak memory (CUDA: max memory reserved; CPU: peak RSS of a "
        "fresh process per model over its after-import peak) per model, image size and batch "
        "size; the best batch per model; CSV, JSON and accuracy trade-off plots. Defaults "
        "come from the `cost` section of the params file.",
        parents=[params_parser()],
    )
    p.add_argument("--models", nargs="+", help="registered model names (default: cost.models)")
    p.add_argument("--image-size", type=int, nargs="+", help="default: cost.image_sizes")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="default: cost.batch_sizes")
    p.add_argument("--repeats", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--min-time", type=float)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--threads", type=int, help="torch threads (default: base.num_threads)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: base.device")
    p.add_argument("--out", type=Path, help="output folder (default: <reports_dir>/cost)")
    p.add_argument(
        "--results", type=Path,
        help="accuracies: a results.json (default: <reports_dir>/results.json if present)",
    )  # fmt: skip
    p.add_argument("--dataset", help="the results.json dataset (default: data.dataset)")
    p.add_argument(
        "--train-step", action="store_true",
        help="time a training step (forward, backward, optimiser step, the recipe's precision) "
        "instead: writes <out>/train_step.csv, the table `glsim plan --throughput` reads "
        "(defaults: image size data.image_size, batch train.batch_size)",
    )  # fmt: skip
    _output_options(p)
    p.set_defaults(func=cmd_bench)
