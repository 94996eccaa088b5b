"""The ``glsim`` command. Subcommands are added by the modules that own them."""

from __future__ import annotations

import argparse

from glsim.data.cli import add_data_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glsim", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_data_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
