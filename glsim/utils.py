"""Small shared helpers: atomic writes, seeding, device selection."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write via a temp file in the same folder, then rename: readers never see a partial file.
    A write error that names no file (a full disk inside a writer) is raised naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_with(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` then rename to ``path``, for writers that take a path (an exporter); an
    error inside ``write`` leaves ``path`` as it was."""
    return _atomic(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` via a temp file; an old file at ``path`` survives a failed write."""

    def write(tmp: Path) -> None:
        # through a Python file object: a full disk is an OSError (ENOSPC); torch's own
        # path writer reports it as an opaque RuntimeError ("unexpected pos")
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return _atomic(path, write)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from glsim.config import ParamsError

        raise ParamsError(
            "base.device is 'cuda' but no CUDA device is available; set it to 'auto' or 'cpu'"
        )
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (``avx512_bf16`` or ``amx_bf16`` among
    its flags, Linux); without it bf16 autocast is emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


BF16_MARGIN = 1.1  # bf16 autocast must make the probe this much faster to be chosen
# a default training step's tokens: batch 32, 8 x 8 patches + CLS, width 128 (params.yaml)
PROBE_SHAPE = (32, 65, 128)


def _bf16_probe(repeats: int = 10) -> tuple[float, float]:
    """CPU seconds of a ViT block's forward + backward at :data:`PROBE_SHAPE` in float32
    and under bf16 autocast, alternating, on one thread; the minimum of ``repeats`` each.
    The calling thread's CPU time (one intra-op thread does all the work) is what the
    kernels cost: unlike wall time, other processes on the machine barely change it."""
    import time

    from timm.models.vision_transformer import Block

    batch, tokens, dim = PROBE_SHAPE
    times: dict[bool, list[float]] = {False: [], True: []}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    # its own random numbers: the caller's generator state (a seeded run's) stays as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        block = Block(dim=dim, num_heads=4)
        x = torch.randn(batch, tokens, dim, requires_grad=True)
    try:
        for i in range(repeats + 1):
            for bf16 in (False, True):
                t0 = time.thread_time()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    y = block(x)
                y.float().square().mean().backward()
                if i:  # the first round warms up
                    times[bf16].append(time.thread_time() - t0)
    finally:
        torch.set_num_threads(before)
    return min(times[False]), min(times[True])


def cpu_bf16_is_faster(cache_dir: str | Path | None = None) -> bool:
    """Whether ``train.cpu_amp: auto`` trains in bfloat16 here: only on a CPU with native
    bf16 where a probe (:func:`_bf16_probe`, about a second) ran at least
    :data:`BF16_MARGIN` times faster under bf16 autocast than in float32. Some CPUs with
    bf16 instructions run it slower than float32 (seen on an AMX host: 15 % slower), so the
    flag alone does not decide. The decision is measured once per host and kept in
    ``<cache>/glsim/cpu_bf16.json`` (``XDG_CACHE_HOME`` or ``~/.cache``), keyed by the CPU
    model and flags and torch's version and CPU capability: timing varies from one probe to
    the next, so a host decides once and always the same, and so does the run key, which
    holds the precision. Delete the file to measure again."""
    if not cpu_has_native_bf16():
        return False
    root = Path(cache_dir or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = root / "glsim" / "cpu_bf16.json"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    host = sorted({line for line in cpuinfo if line.startswith(("model name", "flags"))})
    key = json.dumps([
        host, torch.__version__, torch.backends.cpu.get_cpu_capability(),
        PROBE_SHAPE, BF16_MARGIN,
    ])  # fmt: skip
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        fp32, bf16 = _bf16_probe()
        cache[key] = {"fp32_s": fp32, "bf16_s": bf16, "bf16": fp32 / bf16 >= BF16_MARGIN}
        with contextlib.suppress(OSError):  # a read-only home: decide again next time
            atomic_write_json(path, cache)
    return bool(cache[key]["bf16"])


def set_threads(num_threads: int) -> int:
    """Pin torch's intra-op threads to ``num_threads`` (``base.num_threads``); 0 leaves
    torch's default, which is the number of cores this process may use and so differs
    between machines, containers and ``taskset``/``OMP_NUM_THREADS`` settings. Returns the
    count in effect.

    The count changes results: a matrix product or reduction split over N threads adds its
    terms in another order than over M, so the last bits differ and training drifts apart
    (README "Reproducibility"). What else runs on the machine does not change them."""
    if num_threads > 0 and torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return torch.get_num_threads()


# cuBLAS needs a fixed workspace for deterministic results (CUDA >= 10.2); read when its
# first handle is made, so set before the first CUDA matmul.
CUBLAS_WORKSPACE = ":4096:8"


def configure_determinism(
    num_threads: int, deterministic: bool, device: torch.device, numerics: str = "native"
) -> int:
    """What makes a stage bitwise repeatable on one machine, applied before it computes:
    ``num_threads`` intra-op threads (:func:`set_threads`; returned) and, with
    ``deterministic`` (``base.deterministic``), torch's deterministic algorithms (a warning,
    not an error, for an op that has none) and, on CUDA only, cuDNN without autotuning,
    cuBLAS with a fixed workspace and attention on its math kernel (slower: a bf16
    training step at ViT-B/16 224 took 1.8x as long for ViT, 2.1x for GLSim on an H100;
    BENCHMARKS section 14). On a CPU the ops glsim uses are already deterministic at a fixed
    thread count; the flag matters on CUDA (atomics in scatter/index_add backward, cuDNN's
    and cuBLAS's algorithm choice). A process not running under its ``numerics`` profile
    (``base.numerics``) is refused (:func:`glsim.numerics.check_profile`)."""
    from glsim.numerics import check_profile

    check_profile(numerics)
    threads = set_threads(num_threads)
    if deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            # the fused attention kernels' backward is not deterministic (torch warns, seen
            # on an H100): scaled_dot_product_attention falls back to its math kernel
            torch.backends.cuda.enable_flash_sdp(False)
            torch.backends.cuda.enable_mem_efficient_sdp(False)
            torch.backends.cuda.enable_cudnn_sdp(False)
        torch.use_deterministic_algorithms(True, warn_only=True)
    return threads
