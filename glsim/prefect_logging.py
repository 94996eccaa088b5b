"""A logging filter for Prefect's loggers: an expected failure is one line, not a traceback.

Prefect logs a traceback with every failure it sees: a task run that raised ("Task run
failed with exception: ..."), a flow run that raised ("Encountered exception during
execution: ..."), and, in the process that ran a flow run which ended ``Failed``, "Engine
execution exited with unexpected exception" (also when the flow *returned* its ``Failed``
state: the engine reads the state's result, which raises ``FailedRun``). For the failures
glsim's flows expect (a training run that failed on its input or on a tracking server
that does not answer, a sweep with runs that did not complete, a glsim error whose message
names the bad file, key or value) the message already says
what failed, why and what to do, so the filter keeps the line and drops the traceback, and
drops the engine's "unexpected exception" record, which repeats what the flow run's
"Finished in state Failed(...)" line says. Any other exception keeps its traceback.

It is installed the way Prefect supports: ``scripts/prefect-logging.yml`` (Prefect's
default logging config plus this filter on its run loggers), which
``PREFECT_LOGGING_SETTINGS_PATH`` names; ``scripts/env.sh`` exports it, so a server, worker
or sweep started from such a shell (docs/operations.md) and the flow runs a worker starts
use it. Prefect imports this module while it configures logging, before it has finished
importing itself, so nothing here imports Prefect: exceptions are matched by the dotted
names of their classes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable


class OneLineFailures(logging.Filter):
    """Drops the traceback of a record whose exception is expected: one of ``expected``
    (dotted class names, matched along the exception's class hierarchy) or, with
    ``user_errors``, one of :func:`glsim.errors.user_errors` (errors whose message names
    the bad file, key or value and what to do). Drops the record itself when it is the
    engine's "unexpected exception" record of such an exception."""

    def __init__(self, expected: Iterable[str] = (), user_errors: bool = False) -> None:
        super().__init__()
        self.expected = frozenset(expected)
        self.user_errors = user_errors

    def is_expected(self, exc: BaseException | None) -> bool:
        if exc is None:
            return False
        mro = type(exc).__mro__
        if any(f"{cls.__module__}.{cls.__qualname__}" in self.expected for cls in mro):
            return True
        if self.user_errors and any(cls.__module__.startswith("glsim.") for cls in mro):
            from glsim.errors import user_errors  # a glsim exception: glsim is loaded

            return isinstance(exc, user_errors())
        return False

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not self.is_expected(exc):
            return True
        if "unexpected exception" in str(record.msg):
            return False
        record.exc_info = None
        record.exc_text = None
        return True
