"""``glsim data list`` and ``glsim data prepare``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from glsim.config import params_of_args, params_parser
from glsim.data.registry import (
    dataset_status,
    default_name,
    prepare_dataset,
    registered_specs,
)

DEFAULT_ROOT = Path("data/raw")


def dataset_rows(root: Path) -> list[dict]:
    """One dict per registered dataset: name, counts, flags and its status under ``root``."""
    rows = []
    for spec in registered_specs():
        rows.append(
            {
                "name": spec.name,
                "classes": spec.expected.num_classes,
                "train": spec.expected.train,
                "test": spec.expected.test,
                "manual": spec.manual,
                "large": spec.large,
                "generated": spec.generate is not None,
                "parametric": spec.parametric,
                "status": "n/a" if spec.parametric else dataset_status(spec, root),
                "files": [f.name for f in spec.files],
                "description": spec.description,
            }
        )
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    rows = dataset_rows(Path(args.root))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'name':<13}{'classes':>8}{'train':>9}{'test':>9}  {'manual':<7}{'status':<11}description"
    )
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:,}"  # noqa: E731
        print(
            f"{r['name']:<13}{fmt(r['classes']):>8}{fmt(r['train']):>9}{fmt(r['test']):>9}  "
            f"{'yes' if r['manual'] else 'no':<7}{r['status']:<11}{r['description']}"
        )
    print(f"(status under {args.root})")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Errors propagate to :func:`glsim.errors.guarded` (one ``error:`` line, exit 2)."""
    params = None
    if Path(args.params).is_file():  # for generated datasets and data.raw_dir
        params = params_of_args(args)
    root = args.root or (params.data.raw_dir if params is not None else DEFAULT_ROOT)
    name = args.name or default_name(args.source)
    if args.name:
        from glsim.config import ParamsError, check_dataset_name

        try:
            check_dataset_name(args.name, "--name")
        except ValueError as err:
            raise ParamsError(str(err)) from None
    manifest = prepare_dataset(
        args.source, root, name=name, overrides=args.overrides, params=params, force=args.force,
        allowed_roots=args.allowed_root or None,
    )  # fmt: skip
    print(manifest)
    if name != args.source:
        print(f"(dataset {args.source} prepared as {name!r}: use that name in data.datasets)")
    return 0


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data list`` and ``data prepare`` to a top-level ``glsim`` parser."""
    data = subparsers.add_parser("data", help="list, download and prepare datasets")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("list", help="registered datasets and their status on disk")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="raw-data root (params data.raw_dir)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "prepare", help="download -> verify -> extract -> manifest", parents=[params_parser()]
    )
    p.add_argument("source", help="registered name, or imagefolder:PATH / csv:FILE")
    p.add_argument(
        "--name",
        default=None,
        help="the dataset's plain name, its folder under the root (default: the registered "
        "name, or family-<stem>-<hash> for a path)",
    )
    p.add_argument("--root", default=None, help="raw-data root (default: params data.raw_dir)")
    p.add_argument("--overrides", default=None, help="registry overrides YAML (mirrors, checksums)")
    p.add_argument("--force", action="store_true", help="parse again even if manifest.csv exists")
    p.add_argument(
        "--allowed-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder besides the image folder (or the CSV's folder) that images may lie in "
        "(repeatable; symlinks are followed, any other image is refused)",
    )
    p.set_defaults(func=cmd_prepare)
    return data
