"""What every stage script shares: ``--params`` and optional ``--set key=value`` overrides."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import glsim  # noqa: F401  (sets the telemetry switches before any other import)
from glsim.config import Params, check_params, for_dataset, params_of_args, params_parser
from glsim.numerics import apply_profile


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, parents=[params_parser()])
    p.add_argument("--dataset", help="a data.datasets entry (default: data.dataset)")
    return p


def params_from(args: argparse.Namespace) -> Params:
    """The params of ``--params``/``--set``/``--dataset``, checked; under ``base.numerics:
    portable`` the process first re-executes itself with the CPU code paths pinned, before
    torch loads (:func:`glsim.numerics.apply_profile`)."""
    params = params_of_args(args)
    apply_profile(params.base.numerics)
    return check_params(for_dataset(params, args.dataset or params.data.dataset))


def run(main: Callable[[], None], *, tracking: bool = True) -> None:
    """Run a stage; input errors exit 2 with one line naming the problem (``--debug``: the
    traceback). A stage that tracks checks the store first (a few seconds at most), so a
    server that does not answer stops it before any long work."""
    from glsim.errors import guarded

    def checked() -> None:
        if tracking:
            from glsim.tracking.mlflow import check_tracking

            check_tracking()
        main()

    sys.exit(guarded(checked))
