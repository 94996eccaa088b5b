"""``glsim registry show|promote|rollback`` and ``glsim tracking sync``.

The tracking store is :func:`glsim.tracking.mlflow.tracking_uri` (``MLFLOW_TRACKING_URI``,
else the embedded ``mlflow.db`` here); a store that does not answer is one ``error:`` line.
MLflow is imported only when a command runs, so ``glsim --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from glsim.config import params_of_args, params_parser


def cmd_show(args: argparse.Namespace) -> int:
    from glsim.tracking.registry import describe_model, format_model

    info = describe_model(args.name)
    print(json.dumps(info, indent=2) if args.json else format_model(info))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from glsim.tracking.registry import register_and_promote

    mv, decision = register_and_promote(params_of_args(args), args.dataset, args.model)
    tags = mv.tags
    print(
        f"{mv.name} v{mv.version}: seed {tags.get('seed')} (lowest final train loss of "
        f"{tags.get('seed_train_loss')}), val top-1 {tags.get('val_top1', '-')}, test top-1 "
        f"{tags.get('seed_top1')} (seeds {tags.get('top1_mean')} ± {tags.get('top1_std')}), "
        f"validation {tags.get('validation')}"
    )
    if not decision.alias:
        print(f"v{decision.version} gets no alias: {decision.reason}")
    else:
        moved = "now" if decision.moved else "stays"
        print(f"{decision.alias} {moved} v{decision.version}: {decision.reason}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from glsim.tracking.registry import rollback

    d = rollback(args.name, reason=args.reason)
    print(f"{d.name}: champion v{d.previous} -> v{d.version} ({d.reason})")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from glsim.tracking.sync import sync_run

    incomplete = False
    for target in args.run_dirs:
        result = sync_run(target, experiment=args.experiment)
        print(result.summary(), flush=True)
        for why in result.kept:
            print(f"  kept: {why}", file=sys.stderr)
        incomplete |= bool(result.kept)
    return 1 if incomplete else 0


def add_tracking_commands(subparsers: argparse._SubParsersAction) -> None:
    registry = subparsers.add_parser(
        "registry",
        help="the MLflow model registry: show, promote a seed's model, roll back",
        description="Registered models are named by registry.name_template "
        "(glsim-<dataset>-<model>); the alias `champion` is the one to deploy.",
    )
    reg = registry.add_subparsers(dest="registry_command", required=True)

    show = reg.add_parser("show", help="versions, aliases, tags and alias history of a model")
    show.add_argument("name", help="registered model name, e.g. glsim-synthetic_fg-glsim")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    promote = reg.add_parser(
        "promote",
        help="register a seed's model of DATASET/MODEL and move `champion` or `challenger`",
        description="Registers the seed with the lowest final train loss (its logged model "
        "must hold the run folder's final weights); `champion` moves only if its LR-search "
        "val top-1, measured on the same split and seeds as the champion's, beats the "
        "champion's by more than registry.margin and validation passed. The test top-1 is "
        "recorded, never compared. A rolled-back version is not promoted again.",
        parents=[params_parser()],
    )
    promote.add_argument("dataset")
    promote.add_argument("model")
    promote.set_defaults(func=cmd_promote)

    back = reg.add_parser("rollback", help="move `champion` back to its previous holder")
    back.add_argument("name")
    back.add_argument("--reason", default=None, help="recorded in the alias history")
    back.set_defaults(func=cmd_rollback)

    tracking = subparsers.add_parser("tracking", help="tracking store maintenance")
    trk = tracking.add_subparsers(dest="tracking_command", required=True)
    sync = trk.add_parser(
        "sync",
        help="replay run folders' tracking-pending.jsonl to MLFLOW_TRACKING_URI",
        description="Replays what a run could not send while its tracking server was down, "
        "then renames the file to tracking-pending.synced.jsonl. Exit 1 when some calls "
        "were kept for a later sync (each is named).",
    )
    sync.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        type=Path,
        help="a run folder, or a pending .jsonl file (mlruns-pending/<run>.jsonl)",
    )
    sync.add_argument(
        "--experiment",
        default=None,
        help="experiment of a run created anew (default: base.experiment of the run "
        "folder's params.resolved.yaml, else glsim)",
    )
    sync.set_defaults(func=cmd_sync)
