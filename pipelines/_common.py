"""What every stage script shares: how it runs (input errors as one line, the tracking store
checked first). Its params come from :mod:`glsim.protocol.entry`."""

from __future__ import annotations

import sys
from collections.abc import Callable

import glsim  # noqa: F401  (sets the telemetry switches before any other import)


def run(main: Callable[[], None], *, tracking: bool = True) -> None:
    """Run a stage; input errors exit 2 with one line naming the problem (``--debug``: the
    traceback). A stage that tracks checks the store first (a few seconds at most), so a
    server that does not answer stops it before any long work."""
    from glsim.errors import guarded

    def checked() -> None:
        if tracking:
            from glsim.protocol.entry import check_tracking

            check_tracking()
        main()

    sys.exit(guarded(checked))
