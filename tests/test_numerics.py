"""``base.numerics``: under ``portable`` a tiny pretrain + fine-tune gives the committed
weights on any x86-64 host with AVX2 (the CPU code paths pinned before torch loads); the
profile is in the run key; a contradicting environment is refused; and ``train.cpu_amp:
auto`` decides by a cached measurement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_params

from glsim import numerics, runs
from glsim.config import ParamsError
from glsim.protocol.data import prepare, shard

HERE = Path(__file__).parent
ROOT = HERE.parent
SPEC = runs.RunSpec(model="glsim", seed=1, lr=0.03)

# sha256 (first 16 hex) of the fine-tuned GLSim weights of tests/repro_run.py under
# portable, 1 thread; computed on an AMD EPYC (avx512_bf16, no AMX), torch 2.14.1, MKL
# 2024.2, oneDNN v3.12.0 (BENCHMARKS "Numerics profiles")
PORTABLE_DIGEST = "7a3688fd69bb2e9a"


def tiny_run(data_root: Path, out: Path, profile: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    proc_env = {**clean, **env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    return subprocess.run(
        [sys.executable, str(HERE / "repro_run.py"), str(data_root), str(out), "1", profile],
        env=proc_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.integration
def test_portable_gives_the_committed_weights(tmp_path):
    params = tiny_params(tmp_path)
    prepare(params)
    shard(params)
    proc = tiny_run(tmp_path, tmp_path / "out", "portable")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["capability"] == "AVX2"  # re-executed with the pins before torch loaded
    digest = result["model"][:16]
    assert digest == PORTABLE_DIGEST, (
        f"base.numerics: portable gave weights {digest}, committed {PORTABLE_DIGEST}, on "
        f"{numerics.host_fingerprint()}. If torch, MKL or oneDNN changed, recompute the digest "
        "on the reference host (BENCHMARKS 'Numerics profiles') and commit it; if only the CPU "
        "differs, this CPU's AVX2 paths add in another order: report the fingerprint"
    )


def test_portable_refuses_an_environment_that_contradicts_it(tmp_path):
    proc = tiny_run(tmp_path, tmp_path / "out", "portable", ATEN_CPU_CAPABILITY="avx512")
    assert proc.returncode != 0
    assert "base.numerics is portable but the environment sets ATEN_CPU_CAPABILITY=avx512" in (
        proc.stderr
    )


def test_check_profile_refuses_a_process_without_the_pins(monkeypatch):
    for var in numerics.PORTABLE_ENV:
        monkeypatch.delenv(var, raising=False)
    numerics.check_profile("native")  # native takes whatever the process has
    with pytest.raises(ParamsError, match="started without ATEN_CPU_CAPABILITY"):
        numerics.check_profile("portable")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    with pytest.raises(ParamsError, match="ONEDNN_MAX_CPU_ISA=AVX512_CORE_AMX"):
        numerics.check_profile("portable")


def test_the_profile_is_in_the_run_key_and_portable_trains_float32(tmp_path, monkeypatch):
    monkeypatch.setattr("glsim.utils.cpu_bf16_is_faster", lambda: True)
    native = tiny_params(tmp_path, train={"cpu_amp": "auto"})
    portable = native.with_overrides({"base.numerics": "portable"})
    assert runs.run_key(native, SPEC) != runs.run_key(portable, SPEC)
    assert runs.pretrain_key(native) != runs.pretrain_key(portable)
    assert runs.execution_settings(native)["precision"] == "bf16"
    assert runs.execution_settings(portable)["precision"] == "fp32"
    explicit = portable.with_overrides({"train.cpu_amp": "bf16"})
    assert runs.execution_settings(explicit)["precision"] == "fp32"


def test_cpu_amp_auto_decides_by_a_measurement_kept_per_host(tmp_path, monkeypatch):
    from glsim import utils

    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: True)
    probes = []
    monkeypatch.setattr(utils, "_bf16_probe", lambda: probes.append(1) or (1.05, 1.0))
    assert not utils.cpu_bf16_is_faster(tmp_path)  # 1.05x is under the margin
    monkeypatch.setattr(utils, "_bf16_probe", lambda: probes.append(1) or (2.0, 1.0))
    assert not utils.cpu_bf16_is_faster(tmp_path)  # the kept decision, not a new timing
    assert len(probes) == 1
    (tmp_path / "glsim" / "cpu_bf16.json").unlink()
    assert utils.cpu_bf16_is_faster(tmp_path)
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: False)
    assert not utils.cpu_bf16_is_faster(tmp_path)  # emulated bf16 is never measured


def test_a_stage_script_re_executes_with_the_pins_before_torch_loads(tmp_path):
    """A stage's params (:func:`glsim.protocol.entry.stage_params`) apply ``base.numerics``
    from the params file."""
    code = (
        "import sys; sys.argv = ['stage', '--set', 'base.numerics=portable'];"
        "from glsim.protocol.entry import stage_params, stage_parser;"
        "params = stage_params(stage_parser('x').parse_args());"
        "import os, torch;"
        "print(params.base.numerics, torch.backends.cpu.get_cpu_capability(), os.environ['MKL_CBWR'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["portable", "AVX2", "COMPATIBLE"]


def test_the_glsim_command_applies_the_profile_of_its_params_file(tmp_path):
    """A ``glsim`` subcommand with ``--params`` re-executes under that file's profile."""
    params_file = tmp_path / "params.yaml"
    params_file.write_text("base:\n  numerics: portable\n")
    code = (
        "import argparse, os, sys; from glsim import cli\n"
        "def parser():\n"
        "    p = argparse.ArgumentParser(); p.add_argument('--params'); p.add_argument('--debug')\n"
        "    p.set_defaults(func=lambda a: print(os.environ['ONEDNN_MAX_CPU_ISA'],"
        " __import__('torch').backends.cpu.get_cpu_capability()))\n"
        "    return p\n"
        "cli.build_parser = parser\n"
        "sys.exit(cli.main(['--params', sys.argv[1]]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(params_file)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["AVX2", "AVX2"]


def test_the_bf16_probe_leaves_the_random_state_alone():
    import torch

    from glsim import utils

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    utils._bf16_probe(repeats=1)
    assert torch.equal(torch.rand(3), expected)  # a seeded run draws what it would have
