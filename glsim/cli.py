"""The ``glsim`` command. Subcommands are added by the modules that own them."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from glsim.cost import add_cost_commands
from glsim.data.cli import add_data_commands
from glsim.errors import debug_requested, guarded
from glsim.eval.ledger_check import add_ledger_commands
from glsim.explain import add_explain_command
from glsim.export import add_export_commands
from glsim.inference import add_predict_command
from glsim.launch import add_torchrun_command, torchrun
from glsim.numerics import apply_profile_of
from glsim.protocol.plan import add_plan_command
from glsim.tracking.cli import add_tracking_commands
from glsim.wait import add_wait_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glsim", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an input error"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_data_commands(subparsers)
    add_tracking_commands(subparsers)
    add_predict_command(subparsers)
    add_explain_command(subparsers)
    add_cost_commands(subparsers)
    add_export_commands(subparsers)
    add_plan_command(subparsers)
    add_ledger_commands(subparsers)
    add_torchrun_command(subparsers)
    add_wait_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except BrokenPipeError:  # the reader went away (`glsim plan | head`): stop, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 128 + signal.SIGPIPE


def _main(argv: list[str]) -> int:
    if argv[:1] == ["torchrun"]:  # every argument is torchrun's: argparse would claim some
        return guarded(lambda: torchrun(argv[1:]), debug=debug_requested([]))
    args = build_parser().parse_args(argv)

    def command() -> int | None:
        if getattr(args, "params", None) is not None:  # computes under base.numerics
            apply_profile_of(args.params, getattr(args, "set", None))
        return args.func(args)

    return guarded(command, debug=debug_requested(argv))  # --debug before or after the command


if __name__ == "__main__":
    raise SystemExit(main())
