"""Same params and seed -> bit-identical weights and metrics on one machine, whatever else
runs on it: a tiny pretrain -> GLSim fine-tune -> evaluation twice, each in a
fresh process, the second beside a process that keeps a core busy and with another torch
default thread count (OMP_NUM_THREADS), which ``base.num_threads`` must override."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_params

from glsim.protocol.data import prepare, shard
from glsim.utils import configure_determinism, set_threads

HERE = Path(__file__).parent
ROOT = HERE.parent


def fresh_run(data_root: Path, out: Path, num_threads: int, omp_threads: int) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
        "OMP_NUM_THREADS": str(omp_threads),  # torch's default count in that process
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "repro_run.py"), str(data_root), str(out), str(num_threads)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_same_params_give_bit_identical_weights_beside_a_busy_process(tmp_path):
    params = tiny_params(tmp_path)
    prepare(params)
    shard(params)

    quiet = fresh_run(tmp_path, tmp_path / "quiet", num_threads=1, omp_threads=1)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        loaded = fresh_run(tmp_path, tmp_path / "loaded", num_threads=1, omp_threads=2)
    finally:
        busy.kill()
        busy.wait()

    assert quiet["threads"] == loaded["threads"] == 1  # the param, not the environment
    assert loaded == quiet  # weights' digests, upstream accuracy, losses, test metrics
    assert 0 <= quiet["report"]["top1"] <= 100


def test_set_threads_pins_the_count_and_zero_keeps_it():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 == torch.get_num_threads()
        assert set_threads(0) == 1  # 0: whatever torch has
    finally:
        torch.set_num_threads(before)


def test_configure_determinism_touches_cuda_settings_only_on_cuda(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        assert configure_determinism(1, False, torch.device("cpu")) == 1
        assert not torch.are_deterministic_algorithms_enabled()
        configure_determinism(1, True, torch.device("cpu"))
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # a CPU run leaves CUDA alone
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def test_glsim_sets_the_openmp_and_mkl_switches_before_torch_loads():
    code = "import glsim, os; print(os.environ['MKL_DYNAMIC'], os.environ.get('MKL_CBWR'))"
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "MKL_DYNAMIC")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["FALSE", "None"]  # MKL_CBWR would change the numbers
    env["MKL_DYNAMIC"] = "TRUE"  # a user's own value wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["TRUE", "None"]
