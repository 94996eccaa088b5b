"""``glsim plan``: what a sweep over a params file will train, before it starts.

Every training run the protocol makes (:mod:`glsim.protocol`, as ``dvc repro`` and the
Prefect sweep make them): per dataset of ``data.datasets`` and model of ``protocol.models``,
one LR-search run per LR of ``protocol.lr_grid`` on the search split, one final run per seed
of the dataset's own ``protocol.seeds``; per ablation variant, one run per seed. A run whose
checkpoint already finished under its current run key (:func:`glsim.runs.run_key`,
:func:`glsim.train.run.is_finished`) is listed as done and not counted.

Images to train = epochs x the train images of the split the run reads. The train image
count of a dataset comes from, in order: its shard index (exact), its prepared manifest
(exact; the LR-search split computed as the shard stage computes it), the registry's
published count (Table 9; the LR-search share estimated as fraction x train), else it is
unknown until the dataset is prepared. GPU-hours = images / the images/s of a training step
of that model at that image size, read from a throughput table (``glsim cost bench
--train-step`` writes one on the target GPU). Training only: evaluation is not counted.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from glsim.config import Params, check_params, for_dataset, params_parser
from glsim.errors import CommandError, RunError
from glsim.runs import RunKind, RunSpec

UNKNOWN = "unknown until prepared"


@dataclass(frozen=True)
class TrainImages:
    """Train images per epoch of one dataset: the final runs' and the LR search's."""

    final: int | None
    search: int | None
    source: str  # shards | manifest | registry | UNKNOWN


@dataclass(frozen=True)
class PlannedRun:
    """One training run of the sweep."""

    dataset: str
    kind: RunKind
    name: str  # the model, or the ablation variant
    model: str
    seed: int
    lr: float | None  # None: a final/ablation run whose model's LR search has not chosen yet
    epochs: int
    image_size: int
    batch_size: int
    train_images: int | None  # per epoch
    done: bool  # finished under its current run key

    @property
    def images(self) -> int | None:
        return None if self.train_images is None else self.epochs * self.train_images


# ---------------------------------------------------------------------------------------
# train image counts


def _index_train(shards: Path) -> int | None:
    from glsim.data.shards import INDEX_NAME, read_index

    if not (shards / INDEX_NAME).is_file():
        return None
    return int(read_index(shards)["splits"]["train"]["count"])


def train_images(params: Params) -> TrainImages:
    """Train images per epoch of the dataset ``params`` is resolved for (see the module
    docstring for where the counts come from)."""
    from glsim import runs
    from glsim.data.registry import UnknownDataset, get_dataset
    from glsim.data.splits import search_train_fraction

    try:
        spec = get_dataset(params.data.dataset_source)
    except UnknownDataset:
        spec = None
    large = bool(spec and spec.large)
    configured = params.protocol.search_train_fraction
    final = _index_train(runs.shards_dir(params))
    search = _index_train(runs.shards_dir(params, "lrsearch"))
    if final is not None and search is not None:
        return TrainImages(final, search, "shards")
    manifest = runs.manifest_path(params)
    if manifest.is_file():
        from glsim.data.manifest import read_manifest
        from glsim.data.splits import lr_search_split

        df = read_manifest(manifest)
        n = int((df["split"] == "train").sum())
        fraction = search_train_fraction(configured, large=large, train_images=n)
        split = lr_search_split(df, seed=params.protocol.search_seed, fraction=fraction)
        return TrainImages(n, int((split["split"] == "train").sum()), "manifest")
    n = spec.expected_counts(params).train if spec is not None else None
    if n is None:
        return TrainImages(None, None, UNKNOWN)
    fraction = search_train_fraction(configured, large=large, train_images=n)
    return TrainImages(n, int(n * fraction), "registry")


# ---------------------------------------------------------------------------------------
# the runs


def _finished(params: Params, spec: RunSpec) -> bool:
    from glsim.runs import run_key
    from glsim.train.checkpoint import CHECKPOINT_NAME
    from glsim.train.run import is_finished

    run_dir = spec.run_dir(params)
    if not (run_dir / CHECKPOINT_NAME).is_file():  # no checkpoint: no key to compute
        return False
    return is_finished(run_dir, run_key(params, spec), params.train.epochs)


def _chosen_lr(params: Params, model: str) -> float | None:
    from glsim.protocol.specs import chosen_lr

    try:
        return chosen_lr(params, model)
    except RunError:  # not searched yet (or searched over another grid)
        return None


def dataset_runs(params: Params) -> list[PlannedRun]:
    """Every training run of one dataset (``params`` resolved for it)."""
    from glsim.protocol.specs import search_params, search_spec, variant_params

    counts = train_images(params)
    dataset, seeds = params.data.dataset, list(params.protocol.seeds)
    out: list[PlannedRun] = []

    def add(run_params: Params, spec: RunSpec, images: int | None) -> None:
        done = spec.lr is not None and _finished(run_params, spec)
        out.append(
            PlannedRun(
                dataset=dataset,
                kind=spec.kind,
                name=spec.name,
                model=spec.model,
                seed=spec.seed,
                lr=spec.lr,
                epochs=run_params.train.epochs,
                image_size=run_params.data.image_size,
                batch_size=run_params.train.batch_size,
                train_images=images,
                done=done,
            )  # fmt: skip
        )

    sp = search_params(params)
    chosen = {}
    for model in params.protocol.models:
        for lr in params.protocol.lr_grid:
            add(sp, search_spec(params, model, lr), counts.search)
        chosen[model] = _chosen_lr(params, model)
        for seed in seeds:
            add(params, RunSpec(model=model, seed=seed, lr=chosen[model]), counts.final)
    for name, variant in params.ablations.variants.items():
        vparams = variant_params(params, name)
        lr = chosen[variant.model] if variant.model in chosen else _chosen_lr(params, variant.model)
        for seed in seeds:
            spec = RunSpec(model=variant.model, seed=seed, lr=lr, kind="ablation", variant=name)
            add(vparams, spec, counts.final)
    return out


def plan_runs(params: Params, datasets: list[str] | None = None) -> dict[str, Any]:
    """Every run over ``datasets`` (default: all of ``data.datasets``), and where each
    dataset's train image count came from: ``{"runs": [...], "sources": {dataset: ...}}``."""
    check_params(params)
    names = list(datasets or params.data.datasets)
    resolved = {name: for_dataset(params, name) for name in names}  # every error first
    runs, sources = [], {}
    for name, p in resolved.items():
        sources[name] = train_images(p).source
        runs += dataset_runs(p)
    return {"runs": runs, "sources": sources}


# ---------------------------------------------------------------------------------------
# throughput and GPU-hours


def read_throughput(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``model, image_size, images_per_s`` (optionally ``batch_size`` and
    ``status``: only ``ok`` rows count) from a CSV file or a JSON list of rows."""
    path = Path(path)
    if not path.is_file():
        raise CommandError(
            f"--throughput {path}: no such file; measure it on the target GPU with "
            "`glsim cost bench --train-step --device cuda --out DIR`"
        )
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            rows = data.get("rows", data) if isinstance(data, dict) else data
        else:
            rows = list(csv.DictReader(text.splitlines()))
    except (ValueError, csv.Error) as err:
        raise CommandError(
            f"--throughput {path}: not readable as {path.suffix or 'CSV'}: {err}"
        ) from None
    table = []
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not {"model", "image_size", "images_per_s"} <= set(row):
            raise CommandError(
                f"--throughput {path}: row {i} needs model, image_size and images_per_s "
                f"(got {row!r})"
            )
        if str(row.get("status") or "ok") != "ok" or row["images_per_s"] in (None, ""):
            continue
        batch = row.get("batch_size")
        table.append(
            {
                "model": str(row["model"]),
                "image_size": int(row["image_size"]),
                "batch_size": int(batch) if batch not in (None, "") else None,
                "images_per_s": float(row["images_per_s"]),
            }
        )
    return table


def lookup_rate(
    table: list[dict[str, Any]], model: str, image_size: int, batch_size: int
) -> float | None:
    """Images/s of ``model`` at ``image_size``: the row at ``batch_size``, else the one row
    of that model and size (None: none)."""
    rows = [r for r in table if r["model"] == model and r["image_size"] == image_size]
    exact = [r for r in rows if r["batch_size"] == batch_size]
    if exact:
        return exact[0]["images_per_s"]
    return rows[0]["images_per_s"] if len(rows) == 1 else None


def gpu_hours(run: PlannedRun, table: list[dict[str, Any]] | None) -> float | None:
    if table is None or run.images is None:
        return None
    rate = lookup_rate(table, run.model, run.image_size, run.batch_size)
    return None if rate is None else run.images / rate / 3600


# ---------------------------------------------------------------------------------------
# summary


def summarise(plan: dict[str, Any], table: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Totals of the runs still to train, per dataset, per model and overall."""

    def empty() -> dict[str, Any]:
        return {
            "runs": 0,
            "done": 0,
            "to_run": 0,
            "images": 0,
            "gpu_hours": 0.0,
            "unknown_images": 0,
            "unknown_hours": 0,
        }

    per_dataset: dict[str, dict[str, Any]] = defaultdict(empty)
    per_model: dict[str, dict[str, Any]] = defaultdict(empty)
    per_kind: dict[str, dict[str, Any]] = defaultdict(empty)
    total = empty()
    missing_rates: set[str] = set()
    for run in plan["runs"]:
        hours = gpu_hours(run, table)
        if table is not None and run.images is not None and hours is None:
            missing_rates.add(f"{run.model}@{run.image_size}")
        for entry in (per_dataset[run.dataset], per_model[run.model], per_kind[run.kind], total):
            entry["runs"] += 1
            if run.done:
                entry["done"] += 1
                continue
            entry["to_run"] += 1
            if run.images is None:
                entry["unknown_images"] += 1
            else:
                entry["images"] += run.images
            if hours is None:
                entry["unknown_hours"] += 1
            else:
                entry["gpu_hours"] += hours
    return {
        "per_dataset": dict(per_dataset), "per_model": dict(per_model),
        "per_kind": dict(per_kind), "total": total, "missing_rates": sorted(missing_rates),
    }  # fmt: skip


def plan_dict(plan: dict[str, Any], table: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The plan as JSON-ready data: every run (with its images and GPU-hours) and the totals."""
    runs = [
        {**asdict(r), "images": r.images, "gpu_hours": gpu_hours(r, table)} for r in plan["runs"]
    ]
    return {"runs": runs, "sources": plan["sources"], "summary": summarise(plan, table)}


def _hours(entry: dict[str, Any], table: Any) -> str:
    if table is None:
        return "-"
    text = f"{entry['gpu_hours']:,.1f}"
    return text + (f" (+{entry['unknown_hours']} runs unknown)" if entry["unknown_hours"] else "")


def _images(entry: dict[str, Any]) -> str:
    text = f"{entry['images']:,}"
    return text + (
        f" (+{entry['unknown_images']} runs {UNKNOWN})" if entry["unknown_images"] else ""
    )


def format_plan(
    plan: dict[str, Any], table: list[dict[str, Any]] | None, *, source: str,
    throughput: str | None = None, every_run: bool = False,
) -> str:  # fmt: skip
    """The plan as text: a line per dataset and per model, then the total."""
    s = summarise(plan, table)
    lines = [f"plan of {source}: {len(plan['sources'])} datasets, training only"]
    if every_run:
        lines.append("dataset kind name seed lr epochs images_per_epoch images gpu_h status")
        for r in plan["runs"]:
            hours = gpu_hours(r, table)
            lines.append(
                f"{r.dataset} {r.kind} {r.name} {r.seed} {'?' if r.lr is None else f'{r.lr:g}'} "
                f"{r.epochs} {r.train_images if r.train_images is not None else '?'} "
                f"{r.images if r.images is not None else '?'} "
                f"{'-' if hours is None else f'{hours:.2f}'} {'done' if r.done else 'to run'}"
            )
    lines.append("per dataset (train images from):")
    for name, e in s["per_dataset"].items():
        lines.append(
            f"  {name}: {e['to_run']} of {e['runs']} runs to train, {_images(e)} images, "
            f"{_hours(e, table)} GPU-h  [{plan['sources'][name]}]"
        )
    lines.append("per kind:")
    for kind, e in s["per_kind"].items():
        lines.append(
            f"  {kind}: {e['to_run']} of {e['runs']} runs, {_images(e)} images, {_hours(e, table)} GPU-h"
        )
    lines.append("per model (ablation variants under their model):")
    for model, e in s["per_model"].items():
        lines.append(
            f"  {model}: {e['to_run']} of {e['runs']} runs, {_images(e)} images, {_hours(e, table)} GPU-h"
        )
    t = s["total"]
    lines.append(
        f"total: {t['runs']} runs, {t['done']} finished under their run key (skipped), "
        f"{t['to_run']} to train; {_images(t)} images; {_hours(t, table)} GPU-hours"
    )
    if table is None:
        lines.append(
            "GPU-hours: give --throughput FILE (measure it on the target GPU: glsim cost bench "
            f"--train-step --params {source} --device cuda --out DIR)"
        )
    else:
        lines.append(f"throughput: {throughput} (training steps, images/s)")
        if s["missing_rates"]:
            lines.append(
                f"no throughput for: {', '.join(s['missing_rates'])} (their runs count as unknown)"
            )
    pending = sum(1 for r in plan["runs"] if r.lr is None and r.kind != "lrsearch")
    if pending:
        lines.append(
            f"{pending} final/ablation runs wait for their model's LR search (LR not chosen yet)"
        )
    return "\n".join(lines)


def write_and_log_plan(
    params: Params,
    datasets: list[str] | None = None,
    *,
    throughput: str | Path | None = None,
    source: str = "params",
    track: bool = True,
) -> dict[str, Path]:
    """Write the plan to ``<runs_dir>/plan/`` (``plan.json``: :func:`plan_dict`;
    ``plan.txt``: :func:`format_plan`) and log both, with the totals as metrics, to an
    MLflow run ``plan`` (what the sweep does before it starts). Returns the two paths."""
    from glsim.utils import atomic_write_json, atomic_write_text

    plan = plan_runs(params, datasets)
    table = read_throughput(throughput) if throughput else None
    out = params.base.runs_dir / "plan"
    data = plan_dict(plan, table)
    text = format_plan(plan, table, source=source, throughput=str(throughput or "") or None)
    paths = {
        "json": atomic_write_json(out / "plan.json", data),
        "txt": atomic_write_text(out / "plan.txt", text + "\n"),
    }
    if track:
        from glsim.tracking.mlflow import Tracker

        total = data["summary"]["total"]
        with Tracker(
            experiment=params.base.experiment, run_name="plan", run_dir=out, tags={"stage": "plan"}
        ) as tracker:
            tracker.log_params({"params": source, "throughput": str(throughput)})
            metrics = {f"plan/{k}": total[k] for k in ("runs", "done", "to_run", "images")}
            if table is not None:
                metrics["plan/gpu_hours"] = total["gpu_hours"]
            tracker.log_metrics(metrics)
            for path in paths.values():
                tracker.log_artifact(path, artifact_path="plan")
    return paths


def cmd_plan(args) -> int:
    from glsim.config import params_of_args

    params = params_of_args(args)
    plan = plan_runs(params, args.dataset)
    table = read_throughput(args.throughput) if args.throughput else None
    if args.json:
        print(json.dumps(plan_dict(plan, table), indent=2))
    else:
        print(
            format_plan(
                plan,
                table,
                source=str(args.params),
                throughput=args.throughput,
                every_run=args.runs,
            )  # fmt: skip
        )
    return 0


def add_plan_command(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="the runs a sweep will make, the images to train and the GPU-hours, before it starts",
        description="List every training run of the protocol over a params file (LR search, "
        "final seeds, ablation variants, per dataset), skip those finished under their run "
        "key, and total the images to train and the GPU-hours from a throughput table "
        "(`glsim cost bench --train-step` on the target GPU).",
        parents=[params_parser()],
    )
    p.add_argument(
        "--dataset", action="append", help="a data.datasets entry (repeatable; default: all)"
    )
    p.add_argument(
        "--throughput", help="CSV or JSON rows of model, image_size, images_per_s [, batch_size]"
    )
    p.add_argument("--runs", action="store_true", help="list every run, not only the totals")
    p.add_argument("--json", action="store_true", help="every run and the totals as JSON")
    p.set_defaults(func=cmd_plan)
