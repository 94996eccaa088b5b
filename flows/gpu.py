"""GPU slots: one Prefect global concurrency limit per worker, ``gpu-<worker id>``.

Every training flow run holds one slot of its worker's limit while it trains and
evaluates, so a node never runs more trainings than it has GPUs, however many flow runs
its worker has taken (Prefect's per-worker global-concurrency pattern). The worker id is
``GLSIM_WORKER_ID`` (set when the worker starts; flow runs inherit the worker's
environment), else the host name. The limit is created when missing with
``GLSIM_GPU_SLOTS`` slots, else one per visible CUDA device (at least one):

    python -m flows.gpu --slots 2          # or: prefect gcl create gpu-<id> --limit 2
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

WORKER_ID_ENV = "GLSIM_WORKER_ID"
SLOTS_ENV = "GLSIM_GPU_SLOTS"


def worker_id() -> str:
    return os.environ.get(WORKER_ID_ENV) or socket.gethostname()


def limit_name(worker: str | None = None) -> str:
    return f"gpu-{worker or worker_id()}"


def default_slots() -> int:
    if os.environ.get(SLOTS_ENV):
        return int(os.environ[SLOTS_ENV])
    import torch

    return max(1, torch.cuda.device_count())


def ensure_limit(
    slots: int | None = None, worker: str | None = None, *, update: bool = False
) -> int:
    """Create ``gpu-<worker>`` with ``slots`` slots when missing (``update``: also set the
    slot count of an existing one); returns the limit's slot count."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = limit_name(worker)
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            existing = None
        if existing is not None:
            if update and slots is not None and existing.limit != slots:
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=slots)
                )
                return slots
            return existing.limit
        slots = slots or default_slots()
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=slots)
            )
        except ObjectAlreadyExists:  # another flow run of this worker made it first
            return client.read_global_concurrency_limit_by_name(name).limit
        return slots


@contextmanager
def gpu_slot(enabled: bool = True, slots: int = 1) -> Iterator[dict[str, Any]]:
    """Hold ``slots`` slots of this worker's ``gpu-<id>`` limit (waits until they are free;
    a torchrun training takes one per process); yields a record of the hold (worker, limit,
    slots, acquired/released times, UTC ISO) filled on exit."""
    record: dict[str, Any] = {
        "worker": worker_id(), "limit": limit_name() if enabled else None, "slots": slots,
    }  # fmt: skip
    if not enabled:
        yield record
        return
    from prefect.concurrency.sync import concurrency

    limit = ensure_limit()
    if slots > limit:
        from glsim.protocol.entry import ParamsError

        raise ParamsError(
            f"a run needs {slots} GPU slots but {record['limit']} has {limit}; lower "
            f"GLSIM_PROCS_PER_RUN or raise the limit (python -m flows.gpu --slots {slots})"
        )
    # strict: a limit that vanished must not silently oversubscribe the node
    with concurrency(record["limit"], occupy=slots, strict=True):
        record["acquired"] = _now()
        record["acquired_unix"] = time.time()
        try:
            yield record
        finally:
            record["released_unix"] = time.time()
            record["released"] = _now()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="create (or resize) this worker's gpu-<id> limit")
    p.add_argument(
        "--slots", type=int, help=f"slots (default: ${SLOTS_ENV}, else CUDA devices, >= 1)"
    )
    p.add_argument("--worker-id", help=f"default: ${WORKER_ID_ENV}, else the host name")
    args = p.parse_args(argv)
    slots = ensure_limit(args.slots, args.worker_id, update=True)
    print(f"{limit_name(args.worker_id)}: {slots} slot(s)")


if __name__ == "__main__":
    main()
