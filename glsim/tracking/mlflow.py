"""MLflow tracking: params, per-step/epoch metrics, checkpoints, models, git commit, data hash.

The default store is local and embedded: ``sqlite:///mlflow.db`` at the repo root with
artifacts in ``mlartifacts/`` (both ignored by git); ``MLFLOW_TRACKING_URI`` points it at a
server instead. ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` shows the runs.
A resumed training run continues the same MLflow run (its id is kept in the run folder),
but only while that run's ``run_key`` tag is the configuration's: a run folder retrained
under another configuration gets a new MLflow run, and the two are linked by the
``superseded_by``/``supersedes`` tags. Provenance (:data:`PROVENANCE_TAGS`, ``runtime.*``)
is written when the run is created, never by a later open; a step-indexed metric is written
once per step, so a resumed run may re-send what a crash may have lost.

A server is checked once per process before a stage starts (:func:`check_tracking`, which
raises :class:`TrackingUnavailable` with one line saying what to do). MLflow's HTTP calls are
bounded (``MLFLOW_HTTP_REQUEST_TIMEOUT``/``_MAX_RETRIES``/``_BACKOFF_FACTOR``, set here unless
the user set them), so a lost server costs seconds, not minutes. A server lost mid-run never
stops training: the :class:`Tracker` prints one line, stops calling the server, and appends
every unsent call to a JSON-lines file (:func:`pending_calls` reads it back).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# MLflow reads these at every request (``_EnvironmentVariable.get()`` in
# ``mlflow.utils.rest_utils.http_request``); its defaults (120 s timeout, 7 retries with backoff
# factor 2) stall a stage ~254 s per call when the server is gone. A user's own value wins.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",  # seconds per connect/read, not per upload
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # an int for MLflow: sleeps 0, 2 s (+ jitter)
}
for _key, _value in HTTP_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from glsim.errors import SyncError, TrackingUnavailable  # noqa: E402,F401  (TrackingUnavailable: re-exported)

RUN_ID_FILE = "mlflow_run_id"
PENDING_FILE = "tracking-pending.jsonl"
# what a run was made from, set when the run is created and never overwritten (with every
# ``runtime.*`` tag): a later open (a resume, an evaluation) describes itself elsewhere
PROVENANCE_TAGS = frozenset({"git_commit", "params_hash", "data_dvc_md5", "run_key"})
SUPERSEDED_BY, SUPERSEDES = "superseded_by", "supersedes"
PARAMS_CHANGED = "params_changed_on_resume"  # the params a resume gave other values than logged
CLASS_NAMES = "class_names"  # a logged model's metadata key: its head's class names, in order
EMBEDDED_HINT = (
    "`unset MLFLOW_TRACKING_URI` to use the embedded store (sqlite:///mlflow.db at the repo root)"
)


_CHECKED: set[str] = set()  # URIs that answered in this process


def _display(uri: str) -> str:
    """``uri`` without a password, for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err``, its causes/contexts, and urllib3's wrapped ``reason``s (each once)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += [a for a in e.args if isinstance(a, BaseException)]


def describe(err: BaseException) -> tuple[str, bool]:
    """A short reason for a failed store call, and whether it means the store is unreachable."""
    import requests

    chain = list(_chain(err))
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return "connection refused", True
    if any(isinstance(e, (TimeoutError, socket.timeout, requests.Timeout)) for e in chain) or (
        "timed out" in text
    ):
        return "timed out", True
    if any(isinstance(e, socket.gaierror) for e in chain) or "Failed to resolve" in text:
        return "host not found", True
    if any(isinstance(e, (ConnectionError, requests.ConnectionError)) for e in chain):
        return "connection lost", True
    if m := re.search(r"too many (\d{3}) error", text):
        return f"HTTP {m.group(1)}", True
    first = " ".join(str(err).split())  # one line
    return (first[:200] + "...") if len(first) > 200 else (first or type(err).__name__), False


def _probe(uri: str, timeout: float) -> None:
    """Raise :class:`TrackingUnavailable` unless the store at ``uri`` answers now."""
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        import requests

        url = uri.rstrip("/") + "/health"
        verify: bool | str = True
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            verify = False
        elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
        try:
            r = requests.get(url, timeout=timeout, verify=verify)
        except requests.RequestException as err:
            reason = describe(err)[0]
        else:
            if r.ok:
                return
            reason = f"HTTP {r.status_code} from /health"
        parts = urlsplit(uri)
        start = f"mlflow server --host {parts.hostname} --port {parts.port or 5000}"
        raise TrackingUnavailable(
            f"MLflow tracking server {_display(uri)} is not reachable ({reason}): "
            f"start it (e.g. `{start}`), or {EMBEDDED_HINT}"
        )
    if scheme == "sqlite" and uri.startswith("sqlite:///") and ":memory:" not in uri:
        folder = Path(uri[len("sqlite:///") :].split("?")[0]).parent
    elif scheme in ("", "file"):
        folder = Path(urlsplit(uri).path if scheme else uri)
    else:
        return  # databricks, etc.: nothing cheap to check
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # MLflow creates missing folders under the nearest existing one
    if not os.access(folder, os.W_OK):
        raise TrackingUnavailable(
            f"MLflow tracking store {_display(uri)} is not writable ({folder} is read-only): "
            "make it writable, or set MLFLOW_TRACKING_URI to a running server"
        )


def check_tracking(uri: str | None = None, timeout: float = 5.0) -> None:
    """Fail fast with :class:`TrackingUnavailable` unless the tracking store answers.

    ``uri`` defaults to :func:`tracking_uri`. For an http(s) server this is one
    ``GET <uri>/health`` bounded by ``timeout`` seconds; for a sqlite/file store, a check that
    its folder is writable. A success is remembered for the process (checked once per URI).
    """
    uri = uri or tracking_uri()
    if uri in _CHECKED:
        return
    _probe(uri, timeout)
    _CHECKED.add(uri)


def read_pending(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """The tracking calls a :class:`Tracker` could not send, in order, from its pending file
    (``{"call", "args", "step", "time", "run_id", "run_key"}`` per line: the run id and run
    key of the run they belong to), and how many lines they were read from. A torn last
    line (the process died mid-write) is counted and skipped; no file: ``([], 0)``.

    Raises:
        SyncError: a line other than the last is not JSON (naming it).
    """
    path = Path(path)
    if not path.is_file():
        return [], 0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    calls = []
    for n, line in enumerate(lines, 1):
        try:
            calls.append(json.loads(line))
        except json.JSONDecodeError as err:
            if n != len(lines):
                raise SyncError(
                    f"{path}: line {n} is not JSON ({err.msg}); repair or remove that line "
                    "and run the sync again"
                ) from None
    return calls, len(lines)


def pending_calls(path: str | Path) -> list[dict[str, Any]]:
    """The calls of a pending file (:func:`read_pending`); ``[]`` when there is none."""
    return read_pending(path)[0]


# urllib3 warns on every retry; a lost server is reported once, by the Tracker. Set once
# here (Logger.setLevel clears every logger's cache, so not per tracking call).
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _forget_active_run(run_id: str | None) -> None:
    """Drop ``run_id`` from MLflow's active-run stack without calling the store (which is
    gone), so a later ``start_run`` in this process (or MLflow's atexit end_run) does not
    trip over it."""
    if run_id is None:
        return
    with contextlib.suppress(Exception):  # private MLflow state: best effort
        from mlflow.tracking import fluent

        stack = fluent._active_run_stack.get()
        if stack and stack[-1].info.run_id == run_id:
            stack.pop()
            os.environ.pop("MLFLOW_RUN_ID", None)


def tracking_uri(root: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded sqlite store under ``root``."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"
    )


def _experiment_id(name: str, root: Path, *, embedded: bool) -> str:
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (root.resolve() / "mlartifacts").as_uri() if embedded else None
    return client.create_experiment(name, artifact_location=location)


def use_store(root: str | Path = ".") -> bool:
    """Point MLflow at :func:`tracking_uri`; True when that is the embedded store.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``; for the embedded store
    the variable is removed again, so it does not pin later roots (or child processes) to
    this one.
    """
    embedded = not os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(root))
    if embedded:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return embedded


CONTENT_TAG = "content_digest"  # what a stage's run logged (its reports), hashed


def content_digest(*paths: str | Path, extra: Any = None) -> str:
    """A hash of the files a stage logs (and ``extra``, e.g. its params), for
    :func:`logged_before`."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def logged_before(experiment: str, tags: dict[str, str], root: str | Path = ".") -> str | None:
    """The id of a finished run of ``experiment`` carrying every tag of ``tags`` (None: no
    such run, or no store reachable). A stage whose outputs have not changed since such a
    run (``tags`` holds :data:`CONTENT_TAG`) logs no second run of the same thing."""
    try:
        check_tracking(tracking_uri(root))
        use_store(root)
        exp = MlflowClient().get_experiment_by_name(experiment)
        if exp is None:
            return None
        query = " and ".join(f"tags.{k} = '{v}'" for k, v in sorted(tags.items()))
        found = MlflowClient().search_runs(
            [exp.experiment_id], f"{query} and attributes.status = 'FINISHED'", max_results=1
        )
    except Exception:  # tracking is never why a stage fails here: the caller logs a run
        return None
    return found[0].info.run_id if found else None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def param_values(tree: dict[str, Any]) -> dict[str, str]:
    """``tree`` as the MLflow params a run logs: :func:`flatten`ed, keys with only the
    characters MLflow allows (alphanumerics, ``_ - . space : /``; a table row label may
    hold others, which become ``_``), values as strings of at most 6000 characters."""
    return {re.sub(r"[^\w\-. :/]", "_", k): str(v)[:6000] for k, v in flatten(tree).items()}


def git_commit(root: str | Path = ".") -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_hash(path: str | Path, root: str | Path = ".") -> str:
    """The md5 that ``dvc.lock`` records for output ``path`` (empty when not yet locked)."""
    import yaml

    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return ""
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    want = str(Path(path))
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") == want:
                return str(out.get("md5", ""))
    return ""


def model_example(model, image_size: int):
    """An input example for ``model`` -- one normalised image, float32 (1, 3, S, S) -- and
    the signature it gives: that tensor in, logits (1, C) out."""
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    example = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size))
    example = example.astype(np.float32)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).float().numpy()
    model.train(was_training)
    return example, infer_signature(example, logits)


def log_pytorch_model(
    model,
    name: str = "model",
    registered_model_name: str | None = None,
    *,
    image_size: int | None = None,
    class_names: list[str] | None = None,
):
    """``mlflow.pytorch.log_model`` into the active run, as every glsim model is logged:
    pickled (pt2 export would trace GLSim's data-dependent crop; glsim must be importable
    where it is loaded) with explicit requirements, which skips MLflow's slow inference,
    and in eval mode. With ``image_size``, also the input example and the signature of
    :func:`model_example` (MLflow checks the example through the saved model). With
    ``class_names``, the model's metadata holds them (:func:`logged_class_names`), so the
    model names its classes wherever it is loaded."""
    import mlflow.pytorch
    import torch

    model.eval()
    example = {}
    if image_size is not None:
        input_example, signature = model_example(model, image_size)
        example = {"input_example": input_example, "signature": signature}
    return mlflow.pytorch.log_model(
        model,
        name=name,
        serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "timm==1.0.31", "glsim"],
        registered_model_name=registered_model_name,
        metadata={CLASS_NAMES: list(class_names)} if class_names is not None else None,
        **example,
    )


def logged_class_names(model_uri: str) -> list[str] | None:
    """The class names logged with the model at ``model_uri`` (None: logged without them)."""
    from mlflow.models import get_model_info

    names = (get_model_info(model_uri).metadata or {}).get(CLASS_NAMES)
    return [str(n) for n in names] if names is not None else None


# /proc/cpuinfo flags that select torch's, MKL's and oneDNN's kernels (and so the last bits)
ISA_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
    "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip
# the environment that sets thread counts and MKL's/OpenMP's numerical choices
RUNTIME_ENV = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR", "MKL_DYNAMIC", "OMP_DYNAMIC",
    "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "CUBLAS_WORKSPACE_CONFIG",
)  # fmt: skip


def _cpuinfo(path: str | Path = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """The CPU's model name and flags (empty where there is no /proc/cpuinfo)."""
    model, flags = "", set()
    try:
        text = Path(path).read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def _build_versions(config: str) -> dict[str, str]:
    """MKL's and oneDNN's versions from ``torch.__config__.show()``."""
    out = {}
    mkl = re.search(r"Math Kernel Library Version ([^\s]+)", config)
    if mkl:
        out["mkl"] = mkl.group(1)
    dnn = re.search(r"(?:MKL-DNN|oneDNN) (v[^\s]+)", config)
    if dnn:
        out["onednn"] = dnn.group(1)
    return out


def runtime_tags(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, str]:
    """Tags (``runtime.*``) naming what a run's last bits depend on besides code, params and
    data: the CPU and the instruction sets torch dispatches on, the library versions, the
    thread counts and the knobs that pin them, and the numerics profile the process runs
    under (``portable``: every pin of :mod:`glsim.numerics` set; README "Reproducibility").
    Two runs with the same params and different values here need not agree bit for bit."""
    import numpy
    import timm
    import torch

    from glsim.numerics import active_profile

    model, flags = _cpuinfo(cpuinfo)
    tags = {
        "runtime.numerics": active_profile(),
        "runtime.cpu_model": model or "unknown",
        "runtime.cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "runtime.cpu_isa_flags": " ".join(f for f in ISA_FLAGS if f in flags) or "none",
        "runtime.cpu_count": str(os.cpu_count()),
        "runtime.torch_threads": str(torch.get_num_threads()),
        "runtime.torch_interop_threads": str(torch.get_num_interop_threads()),
        "runtime.deterministic_algorithms": str(torch.are_deterministic_algorithms_enabled()),
        "runtime.python": sys.version.split()[0],
        "runtime.torch": torch.__version__,
        "runtime.timm": timm.__version__,
        "runtime.numpy": numpy.__version__,
        "runtime.blas": "mkl" if torch.backends.mkl.is_available() else "other",
    }
    if hasattr(os, "sched_getaffinity"):
        tags["runtime.cpu_affinity"] = str(len(os.sched_getaffinity(0)))
    for name, version in _build_versions(torch.__config__.show()).items():
        tags[f"runtime.{name}"] = version
    for var in RUNTIME_ENV:
        tags[f"runtime.env.{var}"] = os.environ.get(var, "unset")
    if torch.cuda.is_available():
        tags["runtime.cuda_device"] = torch.cuda.get_device_name()
        tags["runtime.cuda"] = str(torch.version.cuda)
        tags["runtime.cudnn"] = str(torch.backends.cudnn.version())
    return tags


def is_provenance(tag: str) -> bool:
    """Whether ``tag`` says what a run was made from (set once, when it is created)."""
    return tag in PROVENANCE_TAGS or tag.startswith("runtime.")


def provenance_tags(root: str | Path = ".", prefix: str = "") -> dict[str, str]:
    """The code and machine this process runs: ``git_commit`` and :func:`runtime_tags`,
    each under ``prefix`` (``"eval."``: what an evaluation ran on, beside the training's)."""
    tags = {"git_commit": git_commit(root), **runtime_tags()}
    return {f"{prefix}{k}": v for k, v in tags.items()}


class Tracker:
    """One MLflow run, resumable: ``with Tracker(...) as t: t.log_metrics(...)``.

    With a ``run_dir``, the run whose id the folder keeps (``mlflow_run_id``) is reopened if
    its ``run_key`` tag is ``run_key`` (whatever its tags, when ``run_key`` is None).
    Otherwise a new run is started and the folder keeps its id; a run it replaces is tagged
    ``superseded_by=<new id>`` and the new one ``supersedes=<old id>``. A new run gets the
    provenance of this process (:func:`provenance_tags`, under ``provenance_prefix``), the
    ``run_key`` and ``tags``; a reopened one gets the ``tags`` that are not provenance
    (:func:`is_provenance`), so what a run was made from is written once. An evaluation
    passes ``provenance_prefix="eval."``: its own code and machine, beside the training's.

    The store is checked first (:func:`check_tracking`). If it is lost later, the Tracker goes
    :attr:`offline`: one line on stderr, no more calls to the store, and each unsent call is
    appended to :attr:`pending_path` (``<run_dir>/tracking-pending.jsonl``, or
    ``<root>/mlruns-pending/<run_name>.jsonl`` without a run folder) with the run id and
    run key it belongs to. Tracking never raises into the caller once the run has started.
    """

    def __init__(
        self,
        *,
        experiment: str,
        run_name: str,
        run_dir: str | Path | None = None,
        tags: dict[str, str] | None = None,
        root: str | Path = ".",
        parent_run_id: str | None = None,
        run_key: str | None = None,
        provenance_prefix: str = "",
    ) -> None:
        self.root = Path(root)
        self.run_dir = Path(run_dir) if run_dir else None
        self.uri = tracking_uri(self.root)
        check_tracking(self.uri)  # before anything else: a down server fails the stage now
        embedded = use_store(self.root)
        self.experiment_id = _experiment_id(experiment, self.root, embedded=embedded)
        self.run_name, self.tags, self.parent_run_id = run_name, tags or {}, parent_run_id
        self.run_key, self.provenance_prefix = run_key, provenance_prefix
        self.run: mlflow.ActiveRun | None = None
        self._run_id: str | None = None
        self._offline = False
        self._created = False  # started by this Tracker: no metric of it is in the store yet
        self._steps: dict[str, set[int]] = {}  # metric key -> the steps the run holds

    @property
    def offline(self) -> bool:
        """True once the store was lost: calls go to :attr:`pending_path` only."""
        return self._offline

    @property
    def pending_path(self) -> Path:
        if self.run_dir is not None:
            return self.run_dir / PENDING_FILE
        name = re.sub(r"[^\w.-]+", "_", self.run_name).strip("._") or "run"
        return self.root / "mlruns-pending" / f"{name}.jsonl"

    def __enter__(self) -> Tracker:
        run_id = None
        if self.run_dir and (self.run_dir / RUN_ID_FILE).is_file():
            run_id = (self.run_dir / RUN_ID_FILE).read_text().strip() or None
        tags = {**provenance_tags(self.root, self.provenance_prefix), **self.tags}
        if self.run_key is not None:
            tags["run_key"] = self.run_key
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        self._run_id = run_id
        try:
            self.run = self._start(run_id, tags)
        except Exception as err:
            try:  # lost since the check (the store answered then): carry on without it
                _probe(self.uri, timeout=5.0)
            except TrackingUnavailable:
                args = {"run_id": run_id, "experiment_id": self.experiment_id}
                self._lost("start_run", err, {**args, "run_name": self.run_name, "tags": tags})
                return self
            raise  # the store answers: a real error
        self._run_id = self.run.info.run_id
        if self.run_dir:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / RUN_ID_FILE).write_text(self._run_id)
        return self

    def _previous(self, run_id: str | None):
        """The store's run ``run_id`` (None: no id, or the store no longer has that run)."""
        if run_id is None:
            return None
        try:
            run = MlflowClient().get_run(run_id)
        except mlflow.exceptions.MlflowException as err:
            if describe(err)[1]:
                raise
            return None  # stale id (store wiped): start afresh
        return None if run.info.lifecycle_stage == "deleted" else run

    def _start(self, run_id: str | None, tags: dict[str, str]) -> mlflow.ActiveRun:
        old = self._previous(run_id)
        if old is not None and self.run_key in (None, old.data.tags.get("run_key")):
            reopened = {k: v for k, v in tags.items() if not is_provenance(k)}
            return mlflow.start_run(run_id=old.info.run_id, tags=reopened)
        if old is not None:  # the folder's run was of another configuration
            tags = {**tags, SUPERSEDES: old.info.run_id}
        run = mlflow.start_run(experiment_id=self.experiment_id, run_name=self.run_name, tags=tags)
        self._created = True
        if old is not None:
            MlflowClient().set_tag(old.info.run_id, SUPERSEDED_BY, run.info.run_id)
        return run

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FAILED" if exc_type else "FINISHED"
        self._send("end_run", {"status": status}, lambda: mlflow.end_run(status=status))
        if self._offline:
            _forget_active_run(self._run_id)

    @property
    def run_id(self) -> str:
        assert self._run_id is not None, "use Tracker as a context manager"
        return self._run_id

    def _send(self, call: str, args: dict[str, Any], fn: Callable[[], Any], step=None) -> Any:
        """``fn()`` unless offline; a failure takes the Tracker offline. Unsent: kept."""
        if not self._offline:
            try:
                return fn()
            except Exception as err:  # tracking must never stop the caller
                self._lost(call, err)
        self._keep(call, args, step)
        return None

    def _lost(self, call: str, err: BaseException, args: dict[str, Any] | None = None) -> None:
        """Go offline: one line on stderr, and the store is not called again by this Tracker
        (nor trusted by the next one in this process without a new check)."""
        self._offline = True
        _CHECKED.discard(self.uri)
        reason, unreachable = describe(err)
        what = (
            f"lost {_display(self.uri)}" if unreachable else f"{_display(self.uri)} failed {call}"
        )
        print(
            f"tracking: {what} ({reason}); training continues, "
            f"unsent tracking calls are kept in {self.pending_path}",
            file=sys.stderr,
            flush=True,
        )
        if args is not None:
            self._keep(call, args)

    def _keep(self, call: str, args: dict[str, Any], step: int | None = None) -> None:
        line = {"call": call, "args": args, "step": step, "time": round(time.time(), 3)}
        line.update(run_id=self._run_id, run_key=self.run_key)
        try:
            self.pending_path.parent.mkdir(parents=True, exist_ok=True)
            with self.pending_path.open("a") as f:
                f.write(json.dumps(line, default=str) + "\n")
        except OSError as err:  # pragma: no cover - a full/read-only disk
            print(f"tracking: cannot keep {call} in {self.pending_path} ({err})", file=sys.stderr)

    def log_params(self, tree: dict[str, Any]) -> None:
        """Log :func:`param_values` of ``tree``. A reopened run keeps the values it has
        (MLflow params are immutable); the keys this open gives other values (params outside
        the run key, e.g. ``data.workers``) are named in the ``params_changed_on_resume`` tag."""
        flat = param_values(tree)

        def send() -> None:
            existing = mlflow.get_run(self.run_id).data.params
            mlflow.log_params({k: v for k, v in flat.items() if k not in existing})  # resumed
            changed = sorted(k for k, v in flat.items() if existing.get(k, v) != v)
            if changed:
                mlflow.set_tag(PARAMS_CHANGED, " ".join(changed)[:5000])

        self._send("log_params", flat, send)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log ``metrics`` at ``step``. A metric the run already holds at ``step`` (sent
        before a crash, or re-sent by a resumed run) is not logged again: one value per step.
        Without a step, MLflow's step 0, each call is logged (the latest value wins)."""
        flat = {k.replace("/", "_"): float(v) for k, v in metrics.items()}

        def send() -> None:
            new = flat
            if step is not None:
                new = {k: v for k, v in flat.items() if step not in self._steps_of(k)}
            if new:
                mlflow.log_metrics(new, step=step)
            if step is not None:
                for k in new:
                    self._steps[k].add(step)

        self._send("log_metrics", flat, send, step=step)

    def _steps_of(self, key: str) -> set[int]:
        """The steps at which the run holds metric ``key`` (read from the store once)."""
        if key not in self._steps:
            history = [] if self._created else MlflowClient().get_metric_history(self.run_id, key)
            self._steps[key] = {m.step for m in history}
        return self._steps[key]

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        args = {"path": str(Path(path).resolve()), "artifact_path": artifact_path}
        self._send("log_artifact", args, lambda: mlflow.log_artifact(str(path), artifact_path))

    def log_table(self, data: dict[str, list[Any]], artifact_file: str) -> None:
        """Log ``data`` (column -> values) as an MLflow table (``mlflow.log_table``: a JSON
        artifact the UI shows as a table and ``mlflow.load_table`` reads back)."""
        args = {"data": data, "artifact_file": artifact_file}
        self._send("log_table", args, lambda: mlflow.log_table(data, artifact_file))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._send("set_tags", dict(tags), lambda: mlflow.set_tags(tags))

    def log_model(
        self,
        model,
        name: str = "model",
        registered_model_name: str | None = None,
        *,
        image_size: int | None = None,
        class_names: list[str] | None = None,
    ):
        """:func:`log_pytorch_model` into this run. Offline: only a note is kept (the run
        folder's checkpoint is the model, the note holds the class names); returns None."""

        def send():
            return log_pytorch_model(
                model, name, registered_model_name, image_size=image_size, class_names=class_names
            )

        note = {
            "name": name,
            "registered_model_name": registered_model_name,
            "class_names": class_names,
            "run_dir": str(self.run_dir.resolve()) if self.run_dir else None,
            "note": "model not sent; the checkpoint in the run folder is the source of truth",
        }
        return self._send("log_model", note, send)
