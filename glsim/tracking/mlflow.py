"""MLflow tracking: params, per-step/epoch metrics, checkpoints, models, git commit, data hash.

The default store is local and embedded: ``sqlite:///mlflow.db`` at the repo root with
artifacts in ``mlartifacts/`` (both ignored by git); ``MLFLOW_TRACKING_URI`` points it at a
server instead. ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` shows the runs.
A resumed training run continues the same MLflow run (its id is kept in the run folder).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

RUN_ID_FILE = "mlflow_run_id"


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


class Tracker:
    """One MLflow run, resumable: ``with Tracker(...) as t: t.log_metrics(...)``."""

    def __init__(
        self,
        *,
        experiment: str,
        run_name: str,
        run_dir: str | Path | None = None,
        tags: dict[str, str] | None = None,
        root: str | Path = ".",
        parent_run_id: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.run_dir = Path(run_dir) if run_dir else None
        embedded = use_store(self.root)
        self.experiment_id = _experiment_id(experiment, self.root, embedded=embedded)
        self.run_name, self.tags, self.parent_run_id = run_name, tags or {}, parent_run_id
        self.run: mlflow.ActiveRun | None = None

    def __enter__(self) -> Tracker:
        run_id = None
        if self.run_dir and (self.run_dir / RUN_ID_FILE).is_file():
            run_id = (self.run_dir / RUN_ID_FILE).read_text().strip() or None
        tags = {"git_commit": git_commit(self.root), **self.tags}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        try:
            self.run = mlflow.start_run(
                run_id=run_id, experiment_id=self.experiment_id, run_name=self.run_name, tags=tags
            )
        except mlflow.exceptions.MlflowException:  # stale id (store wiped): start afresh
            self.run = mlflow.start_run(
                experiment_id=self.experiment_id, run_name=self.run_name, tags=tags
            )
        if self.run_dir:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / RUN_ID_FILE).write_text(self.run.info.run_id)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        mlflow.end_run(status="FAILED" if exc_type else "FINISHED")

    @property
    def run_id(self) -> str:
        assert self.run is not None, "use Tracker as a context manager"
        return self.run.info.run_id

    def log_params(self, tree: dict[str, Any]) -> None:
        # MLflow keys allow only alphanumerics, _ - . space : / (table row labels may not)
        flat = {re.sub(r"[^\w\-. :/]", "_", k): str(v)[:6000] for k, v in flatten(tree).items()}
        existing = mlflow.get_run(self.run_id).data.params
        mlflow.log_params(
            {k: v for k, v in flat.items() if k not in existing}
        )  # resumed: same values

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({k.replace("/", "_"): float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def log_model(self, model, name: str = "model", registered_model_name: str | None = None):
        """``mlflow.pytorch.log_model`` (pickled; glsim must be importable where it is loaded)
        with explicit requirements, which skips MLflow's slow requirement inference."""
        import mlflow.pytorch
        import torch

        return mlflow.pytorch.log_model(
            model,
            name=name,
            serialization_format="pickle",  # pt2 export would trace GLSim's data-dependent crop
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "timm==1.0.31", "glsim"],
            registered_model_name=registered_model_name,
        )
