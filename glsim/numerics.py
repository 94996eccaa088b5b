"""Numerics profiles (``base.numerics``): which CPU code paths torch, oneDNN and MKL take.

``native`` lets each library pick the fastest kernels this CPU has (AVX-512, AVX-512 BF16,
AMX): fastest, but the weights differ between CPUs, since each instruction set adds terms in
its own order. ``portable`` pins all three to AVX2 (a baseline every x86-64 host of a cloud
machine kind has) and trains in float32 (AMX and AVX-512 BF16 round bfloat16 differently),
so hosts with different CPU generations give the same bits (BENCHMARKS "Numerics profiles").

The libraries read the pins once, when they load, so they must be in the environment before
torch is imported: :func:`apply_profile` re-executes the process with them set (stage
scripts, the ``glsim`` command, the sweep flow and torchrun ranks call it before loading
torch), and :func:`check_profile` refuses, in one line, a process whose environment
contradicts its profile (a pin set to another value, or torch loaded before the pins were
set). For a process glsim does not start (a Prefect worker), ``python -m glsim.numerics
portable -- CMD ...`` runs CMD with the pins. This module imports nothing heavy: no torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROFILES = ("native", "portable")

# what ``portable`` pins; torch reads ATEN_CPU_CAPABILITY, oneDNN ONEDNN_MAX_CPU_ISA and MKL
# MKL_CBWR (conditional numerical reproducibility: one code path whatever the CPU vendor or
# generation) when each loads
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
}
# what torch.backends.cpu.get_cpu_capability() says when ATEN_CPU_CAPABILITY=avx2 took hold
PORTABLE_CAPABILITY = "AVX2"


def _check_name(profile: str) -> None:
    if profile not in PROFILES:
        from glsim.config import ParamsError

        raise ParamsError(f"base.numerics is {profile!r}; use one of {', '.join(PROFILES)}")


def _refuse(profile: str, what: str, fix: str | None = None) -> None:
    from glsim.config import ParamsError

    pins = " ".join(f"{k}={v}" for k, v in PORTABLE_ENV.items())
    fix = fix or f"unset them (the profile sets {pins})"
    raise ParamsError(f"base.numerics is {profile} but {what}; {fix} or set base.numerics: native")


def _refuse_conflicts(profile: str) -> None:
    """Refuse a pin of ``profile`` that the environment sets to another value."""
    if profile != "portable":
        return
    conflicts = [
        f"{var}={os.environ[var]}"
        for var, value in PORTABLE_ENV.items()
        if var in os.environ and os.environ[var].strip().lower() != value.lower()
    ]
    if conflicts:
        _refuse(profile, f"the environment sets {' '.join(conflicts)}")


def profile_env(profile: str) -> dict[str, str]:
    """The environment variables ``profile`` pins (none for ``native``)."""
    _check_name(profile)
    return dict(PORTABLE_ENV) if profile == "portable" else {}


def apply_profile(profile: str) -> None:
    """Make this process run under ``profile``: return when its environment already has the
    pins, else re-execute the same command line with them added (``os.execv``; nothing is
    printed, the process id stays, so torchrun and DVC see one process). A pin the user set
    to another value is refused (:class:`~glsim.config.ParamsError`) rather than
    overridden silently. Call it before torch is imported: the re-executed process loads
    torch with the pins."""
    env = profile_env(profile)
    _refuse_conflicts(profile)
    missing = {k: v for k, v in env.items() if k not in os.environ}
    if not missing:
        return
    os.environ.update(missing)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def apply_profile_of(params_file: str | Path, overrides: list[str] | None = None) -> None:
    """:func:`apply_profile` with ``base.numerics`` of a params file (and ``--set``
    overrides); a missing file is left to the command to report."""
    from glsim.config import load_params, parse_sets

    if not Path(params_file).exists():  # the command itself reports a missing file
        return
    apply_profile(load_params(params_file, parse_sets(overrides or [])).base.numerics)


def active_profile() -> str:
    """``portable`` when this process's environment holds every pin, else ``native``."""
    pinned = all(
        os.environ.get(k, "").strip().lower() == v.lower() for k, v in PORTABLE_ENV.items()
    )
    return "portable" if pinned else "native"


def check_profile(profile: str) -> None:
    """Refuse to compute under ``profile`` when this process does not run with it: a pin
    missing (torch loaded before :func:`apply_profile`) or set to another value, or torch
    not on the pinned kernels (a CPU without AVX2)."""
    _check_name(profile)
    if profile == "native":
        return
    _refuse_conflicts(profile)
    missing = [k for k in PORTABLE_ENV if k not in os.environ]
    if missing:
        _refuse(
            profile,
            f"this process started without {', '.join(missing)} (torch loaded before the "
            "profile was applied)",
            "run it through a stage script, the glsim command or "
            f"python -m glsim.numerics {profile} -- CMD,",
        )
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability != PORTABLE_CAPABILITY:
        _refuse(profile, f"torch runs its {capability} kernels, not AVX2", "use a CPU with AVX2")


def host_record() -> dict[str, object]:
    """What a run's bits may depend on besides its run key, one field each: the CPU model,
    the instruction sets its kernels dispatch on (:data:`glsim.tracking.mlflow.ISA_FLAGS`
    present), the torch, MKL, oneDNN and Python versions (``"unknown"`` where a build
    does not say), and the GPU and CUDA version when a GPU is visible (``"none"`` else).
    Training and pretraining record it beside their result."""
    import platform

    import torch

    from glsim.tracking.mlflow import ISA_FLAGS, _build_versions, _cpuinfo

    model, flags = _cpuinfo()
    builds = _build_versions(torch.__config__.show())
    return {
        "cpu_model": model or "unknown",
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "torch": torch.__version__,
        "mkl": builds.get("mkl", "unknown"),
        "onednn": builds.get("onednn", "unknown"),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "cuda": torch.version.cuda if torch.cuda.is_available() else "none",
    }


def host_fingerprint(host: dict[str, object] | None = None) -> str:
    """A :func:`host_record` (this host's when None) on one line: what a portable run's
    bits may still depend on."""
    host = host if host is not None else host_record()
    isa = ",".join(host["isa_flags"]) or "none"
    gpu = host.get("gpu", "none")
    return (
        f"{host['cpu_model']} [{isa}] torch {host['torch']} mkl {host['mkl']} "
        f"onednn {host['onednn']} python {host['python']}"
        + (f" {gpu} cuda {host.get('cuda')}" if gpu not in ("none", "?") else "")
    )


def main(argv: list[str]) -> None:
    """``python -m glsim.numerics PROFILE -- CMD ...``: run CMD with PROFILE's pins."""
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: python -m glsim.numerics {native,portable} -- CMD [ARG ...]")
    env = profile_env(argv[0])
    _refuse_conflicts(argv[0])
    os.environ.update(env)
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    from glsim.errors import guarded

    sys.exit(guarded(lambda: main(sys.argv[1:])))
