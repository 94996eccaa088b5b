"""A torchrun training holds one slot per process of its worker's ``gpu-<id>`` limit."""

from __future__ import annotations

import pytest

from flows import gpu
from glsim.config import ParamsError


def test_a_run_holds_as_many_slots_as_processes(prefect_harness, monkeypatch):
    from prefect.client.orchestration import get_client

    monkeypatch.setenv(gpu.WORKER_ID_ENV, "slots-test")
    assert gpu.ensure_limit(3, update=True) == 3
    with gpu.gpu_slot(slots=2) as record:
        with get_client(sync_client=True) as client:
            held = client.read_global_concurrency_limit_by_name("gpu-slots-test").active_slots
        assert held == 2 and record["slots"] == 2
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("gpu-slots-test").active_slots == 0
    too_many = pytest.raises(ParamsError, match="needs 4 GPU slots but gpu-slots-test has 3")
    with too_many, gpu.gpu_slot(slots=4):
        pass
