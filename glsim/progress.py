"""Progress bars for people watching a terminal, and nothing for log files.

One rule for every long loop (training epochs, evaluation, sharding, validation, archive
extraction, ``glsim predict`` / ``explain``): a tqdm bar with rate and ETA on stderr when
stderr is a terminal, else the iterable itself, untouched, so that a log (a DVC stage, a
cluster job) keeps only the lines the code prints. ``GLSIM_PROGRESS=1`` forces bars on,
``GLSIM_PROGRESS=0`` off.

A bar only counts what its loop yields: it reads nothing from a device, so wrapping a loop
changes neither its numbers nor when it syncs with the host.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

ENV_VAR = "GLSIM_PROGRESS"
T = TypeVar("T")


def progress_enabled() -> bool:
    """``GLSIM_PROGRESS`` when it is ``0`` or ``1``; otherwise whether stderr is a terminal."""
    forced = os.environ.get(ENV_VAR, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    disable: bool = False,
) -> Iterable[T] | Any:
    """``iterable`` behind a tqdm bar on stderr, or ``iterable`` itself when bars are off.

    Args:
        iterable: what the loop walks; None for a bar the caller advances with ``update(n)``
            (then None comes back when bars are off, and the caller checks for it).
        total: items expected (for the ETA); ``len(iterable)`` when it has one.
        desc: the bar's label.
        unit: what one item is (``step``, ``batch``, ``img``, ``shard``, ``file``).
        disable: no bar whatever the terminal says (e.g. every rank but 0 under torchrun).
    """
    if disable or not progress_enabled():
        return iterable
    # leave=False: a finished bar is erased, so what stays on screen is what a log gets
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


def set_postfix(bar: Any, **values: Any) -> None:
    """Show ``values`` after ``bar`` (nothing when ``bar`` is a plain iterable). Pass values
    already on the host: the bar must not be the reason for a device sync."""
    if isinstance(bar, tqdm):
        bar.set_postfix(values, refresh=False)


def write(line: str, bar: Any = None) -> None:
    """One line on stderr, above ``bar`` when one is showing."""
    if isinstance(bar, tqdm):
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)
