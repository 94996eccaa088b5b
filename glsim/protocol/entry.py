"""What a stage script or a flow does before its work: read its params (``--params``, ``--set``,
``--dataset``), resolve and check them, pin the numerics profile, check the tracking store.

The params API the stage scripts and flows use comes through here (:mod:`glsim.config`'s
``Params``, ``ParamsError``, ``params_parser``, ``parse_sets``; :mod:`glsim.numerics`'s
profile), so they import nothing of glsim but :mod:`glsim.protocol` and :mod:`glsim.errors`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from glsim.config import (
    Params,
    ParamsError,
    check_params,
    for_dataset,
    load_params,
    params_of_args,
    params_parser,
    parse_sets,
)
from glsim.numerics import apply_profile, apply_profile_of

__all__ = [
    "Params", "ParamsError", "apply_profile", "apply_profile_of", "check_tracking",
    "params_parser", "parse_sets", "resolve", "root_params", "stage_params", "stage_parser",
]  # fmt: skip


def stage_parser(description: str) -> argparse.ArgumentParser:
    """A stage script's parser: ``--params``, ``--set``, ``--debug`` and ``--dataset``."""
    p = argparse.ArgumentParser(description=description, parents=[params_parser()])
    p.add_argument("--dataset", help="a data.datasets entry (default: data.dataset)")
    return p


def stage_params(args: argparse.Namespace) -> Params:
    """The params of ``--params``/``--set``/``--dataset``, checked; under ``base.numerics:
    portable`` the process first re-executes itself with the CPU code paths pinned, before
    torch loads (:func:`glsim.numerics.apply_profile`)."""
    params = params_of_args(args)
    apply_profile(params.base.numerics)
    return _one_dataset(params, args.dataset)


def root_params(params_file: str | Path, overrides: dict[str, Any] | None = None) -> Params:
    """The root tree of a params file and dotted ``overrides`` (as ``--set``), checked, not
    one dataset's: each dataset is resolved from it with its own overrides (``protocol.seeds``
    among them)."""
    return check_params(load_params(params_file, overrides or None))


def resolve(
    params_file: str | Path, overrides: dict[str, Any] | None, dataset: str | None
) -> Params:
    """One dataset's params, as a stage script resolves them (``--params``/``--set``/``--dataset``)."""
    return _one_dataset(load_params(params_file, overrides or None), dataset)


def _one_dataset(params: Params, dataset: str | None) -> Params:
    return check_params(for_dataset(params, dataset or params.data.dataset))


def check_tracking() -> None:
    """The tracking store answers (a few seconds at most), so a server that does not stops a
    stage before any long work (:func:`glsim.tracking.mlflow.check_tracking`)."""
    from glsim.tracking.mlflow import check_tracking as check

    check()
