"""``glsim torchrun``: torchrun whose exit status says what the ranks said.

torchrun itself exits 1 for any failed rank and prints a multi-line ``ChildFailedError``
summary. A rank that stops on an input error (:func:`glsim.errors.guarded`) prints its one
``error:`` line, exits 2 and appends its record to the file ``GLSIM_ERROR_RECORD`` names
(:mod:`glsim.errors`); this launcher runs torchrun's own ``run`` in-process with that file
set, and when the first failed rank left a record it exits 2 too, without the summary, like
a stage run without torchrun. Any other failure (a crash, a signal) keeps torchrun's summary
and its exit status 1.

    glsim torchrun --standalone --nproc_per_node 2 pipelines/train.py --model glsim --seed 1
"""

from __future__ import annotations

import sys

INPUT_ERROR = 2  # the exit status of glsim.errors.guarded for an input error


def torchrun(argv: list[str]) -> int:
    """Run ``torchrun argv`` (its own arguments, then the script and the script's); return
    2 when the first failed rank stopped on an input error."""
    import logging
    import os
    import tempfile
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from glsim.errors import ERROR_RECORD_ENV, debug_requested, read_error_records

    if not debug_requested([]):  # its per-rank failure log repeats what the summary says
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="glsim-torchrun-") as tmp:
        record = os.environ.setdefault(ERROR_RECORD_ENV, str(Path(tmp) / "errors.jsonl"))
        try:
            run(parse_args(argv))
        except ChildFailedError as err:
            rank, _ = err.get_first_failure()
            if any(r["rank"] == rank for r in read_error_records(record)):
                return INPUT_ERROR  # each rank printed its line already
            print(err.format_msg(), file=sys.stderr)
            return 1
        finally:
            if record.startswith(tmp):
                del os.environ[ERROR_RECORD_ENV]
    return 0


def add_torchrun_command(subparsers) -> None:
    p = subparsers.add_parser(
        "torchrun",
        help="torchrun that exits 2 with the rank's one error: line on an input error",
        description="Every argument goes to torchrun (e.g. --standalone --nproc_per_node 2 "
        "pipelines/train.py --model glsim --seed 1). A rank's input error is one error: line "
        "and exit status 2; any other failure keeps torchrun's summary and status 1.",
        add_help=False,
    )
    p.add_argument("args", nargs="*", help="torchrun's arguments, the script and its own")
    p.set_defaults(func=lambda args: torchrun(args.args))  # glsim.cli passes argv through
