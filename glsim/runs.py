"""One home for runs: what identifies a run (:class:`RunSpec`, :func:`run_key`) and every
path a stage reads or writes.

Stages, evaluation, the aggregate and the flows ask this module for paths; ``dvc.yaml``
states the same paths with its templates, and ``tests/test_runs.py`` checks, for several
params files, that every ``outs``/``metrics`` path DVC resolves is the one
:func:`stage_outputs` gives. ``params`` is always the tree resolved for one dataset
(:func:`glsim.config.for_dataset`), so ``params.data.dataset`` names the dataset.

Layout (``base.runs_dir`` = ``runs/``, ``base.reports_dir`` = ``reports/``)::

    data/raw/<dataset>/                          prepared dataset (manifest.csv)
    data/shards/<dataset>/[lrsearch/]            WebDataset shards (+ the LR-search split)
    runs/pretrain/                               upstream pretraining work folder
    runs/<dataset>/<model>/seed<S>/              a final run (last.pt, train.json, ...)
    runs/<dataset>/lrsearch/<model>/lr<LR>/seed<S>/
    runs/<dataset>/ablation/<variant>/seed<S>/
    reports/pretrain.json
    reports/datasets/<dataset>/{validation,probe}.json, probe_explain.png
    reports/datasets/<dataset>/lr_search/<model>.json
    reports/datasets/<dataset>/eval/<model>/seed<S>.json   (+ seed<S>_per_class.csv, _explain.png)
    reports/datasets/<dataset>/ablation/<variant>/seed<S>.json   (+ _per_class.csv, _explain.png)
    reports/results.{json,md,tex}
    reports/ledger.{json,md}                              what each number was made with
    reports/plots/curves/<dataset>/<model>/seed<S>.json   a final run's loss/acc per epoch
    reports/plots/lr_search/<dataset>/<model>.json        val top-1 per LR
    reports/plots/results.json                            the results table as rows
    reports/cost/{bench.csv,bench.json,time.csv,accuracy_vs_*.png}

``reports/plots/`` holds only what ``dvc plots show`` draws (``plots:`` in ``dvc.yaml``):
flat lists of rows. A final run's curve lives there, not in its run folder, because DVC
refuses an output inside another stage output (the run folder is one).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from glsim.config import Params, for_dataset

RunKind = Literal["final", "lrsearch", "ablation"]
LR_SEARCH_DIR = "lrsearch"  # the LR-search split's shards, inside the dataset's shard folder


# ---------------------------------------------------------------------------------------
# data


def raw_dir(params: Params) -> Path:
    """The prepared dataset's folder (``manifest.csv`` and what it was made from)."""
    return params.data.raw_dir / params.data.dataset


def manifest_path(params: Params) -> Path:
    return raw_dir(params) / "manifest.csv"


def shards_dir(params: Params, kind: RunKind = "final") -> Path:
    """The shard folder a run of ``kind`` reads (LR-search runs read the train/val split)."""
    root = params.data.shards_dir / params.data.dataset
    return root / LR_SEARCH_DIR if kind == "lrsearch" else root


def shard_source(params: Params, kind: RunKind = "final") -> str:
    """Where training and evaluation read the shards of :func:`shards_dir`: the same place
    under ``data.shards_url`` (any fsspec URL) when it is set, else that folder."""
    local = shards_dir(params, kind)
    if not params.data.shards_url:
        return str(local)
    relative = local.relative_to(params.data.shards_dir).as_posix()
    return f"{params.data.shards_url.rstrip('/')}/{relative}"


def images_root(params: Params, kind: RunKind = "final") -> Path:
    """What the shards' sample paths are relative to, for naming a bad image by the user's
    own file: the manifest's folder (the LR search's manifest lies in its shard folder)."""
    return shards_dir(params, kind) if kind == "lrsearch" else manifest_path(params).parent


# ---------------------------------------------------------------------------------------
# reports


def dataset_reports(params: Params) -> Path:
    return params.base.reports_dir / "datasets" / params.data.dataset


def validation_report(params: Params) -> Path:
    return dataset_reports(params) / "validation.json"


def probe_report(params: Params) -> Path:
    return dataset_reports(params) / "probe.json"


def probe_explain(params: Params) -> Path:
    """The pretrained backbone's explanation grid (GLS heatmaps, boxes, crops)."""
    return dataset_reports(params) / "probe_explain.png"


def lr_report(params: Params, model: str) -> Path:
    return dataset_reports(params) / "lr_search" / f"{model}.json"


def eval_report(params: Params, model: str, seed: int) -> Path:
    return dataset_reports(params) / "eval" / model / f"seed{seed}.json"


def ablation_report(params: Params, variant: str, seed: int) -> Path:
    return dataset_reports(params) / "ablation" / variant / f"seed{seed}.json"


def pretrain_dir(params: Params) -> Path:
    return params.base.runs_dir / "pretrain"


def pretrain_report(params: Params) -> Path:
    return params.base.reports_dir / "pretrain.json"


def localisation_curve_dir(params: Params, seed: int, task: str | None = None) -> Path:
    """The localisation curve's pretraining of seed ``seed`` on upstream ``task`` (default
    ``pretrain.task``): checkpoint, weights of every epoch (``snapshots/``) and their
    upstream accuracies."""
    root = params.base.runs_dir / "localisation_curve"
    return root / (task or params.pretrain.task) / f"seed{seed}"


def localisation_curve_paths(params: Params) -> dict[str, Path]:
    """The localisation curve's outputs, in ``reports/localisation_curve/``: every probe row
    (``csv``), the per-snapshot mean and std over seeds with the verdicts (``json``), the
    table (``md``) and the plot (``png``)."""
    root = params.base.reports_dir / "localisation_curve"
    return {fmt: root / f"curve.{fmt}" for fmt in ("csv", "json", "md", "png")}


def results_paths(params: Params) -> dict[str, Path]:
    """The aggregate's outputs: ``results.json``, ``.md`` and ``.tex``, and the table's rows
    for ``dvc plots`` (``plot``)."""
    root = params.base.reports_dir
    paths = {fmt: root / f"results.{fmt}" for fmt in ("json", "md", "tex")}
    return {**paths, "plot": plots_dir(params) / "results.json"}


def ledger_paths(params: Params) -> dict[str, Path]:
    """The aggregate's reproduction ledger: ``ledger.json`` (what ``glsim ledger check``
    compares a run folder with) and ``ledger.md``."""
    root = params.base.reports_dir
    return {fmt: root / f"ledger.{fmt}" for fmt in ("json", "md")}


def plots_dir(params: Params) -> Path:
    """What ``dvc plots`` draws (see the module docstring)."""
    return params.base.reports_dir / "plots"


def curve_path(params: Params, model: str, seed: int) -> Path:
    """A final run's per-epoch loss and accuracy (rows ``epoch, loss, acc``)."""
    return plots_dir(params) / "curves" / params.data.dataset / model / f"seed{seed}.json"


def lr_plot(params: Params, model: str) -> Path:
    """The LR search's val top-1 per LR (rows ``lr, val_top1``)."""
    return plots_dir(params) / "lr_search" / params.data.dataset / f"{model}.json"


def cost_files(out_dir: Path) -> dict[str, Path]:
    """What ``glsim cost bench`` (and the ``cost`` stage) writes into ``out_dir``: every bench
    row, the best batches and ratios (metrics), the two trade-off plots, the DFSM timing."""
    return {
        "csv": out_dir / "bench.csv",
        "json": out_dir / "bench.json",
        "throughput_plot": out_dir / "accuracy_vs_throughput.png",
        "memory_plot": out_dir / "accuracy_vs_memory.png",
        "time": out_dir / "time.csv",
    }


def cost_paths(params: Params) -> dict[str, Path]:
    """The ``cost`` stage's outputs, in ``reports/cost/``."""
    return cost_files(params.base.reports_dir / "cost")


def lr_search_dir(params: Params, model: str) -> Path:
    """The LR search's run folder for ``model`` (every LR's run, and ``search.json``)."""
    return params.base.runs_dir / params.data.dataset / "lrsearch" / model


# ---------------------------------------------------------------------------------------
# runs


@dataclass(frozen=True)
class RunSpec:
    """Identifies a run: which model (or ablation variant) with which seed and LR.

    ``final`` runs train on the whole train split (Table 4); ``lrsearch`` runs train on the
    search split's train part and are scored on its val part; ``ablation`` runs are the
    named variants of ``ablations.variants``.
    """

    model: str
    seed: int
    lr: float | None = None
    kind: RunKind = "final"
    variant: str | None = None

    @property
    def name(self) -> str:
        return self.variant or self.model

    def label(self, params: Params) -> str:
        """The MLflow run name: ``dataset/[kind/]name[/lrX]/seedS``."""
        parts = [params.data.dataset]
        if self.kind != "final":
            parts.append(self.kind)
        parts.append(self.name)
        if self.kind == "lrsearch":
            parts.append(f"lr{self.lr:g}")
        return "/".join([*parts, f"seed{self.seed}"])

    def run_dir(self, params: Params) -> Path:
        root = params.base.runs_dir / params.data.dataset
        if self.kind == "lrsearch":
            return lr_search_dir(params, self.model) / f"lr{self.lr:g}" / f"seed{self.seed}"
        if self.kind == "ablation":
            return root / "ablation" / self.name / f"seed{self.seed}"
        return root / self.model / f"seed{self.seed}"

    def report_path(self, params: Params) -> Path:
        """Where the run's evaluation is written (LR-search runs: ``val.json`` in the run)."""
        if self.kind == "lrsearch":
            return self.run_dir(params) / "val.json"
        if self.kind == "ablation":
            return ablation_report(params, self.name, self.seed)
        return eval_report(params, self.model, self.seed)

    def per_class_path(self, params: Params) -> Path:
        """The per-class accuracy table (CSV) beside the run's evaluation report."""
        report = self.report_path(params)
        return report.with_name(f"{report.stem}_per_class.csv")

    def explain_path(self, params: Params) -> Path:
        """The explanation grid (PNG) of the run's first test images, beside its report."""
        report = self.report_path(params)
        return report.with_name(f"{report.stem}_explain.png")

    def curve_path(self, params: Params) -> Path:
        """The run's per-epoch loss and accuracy: under ``reports/plots/`` for a final run
        (drawn by ``dvc plots``), else ``curve.json`` in the run folder."""
        if self.kind == "final":
            return curve_path(params, self.model, self.seed)
        return self.run_dir(params) / "curve.json"


def spec_of_run_dir(run_dir: Path, params: Params) -> tuple[RunSpec, Path]:
    """The inverse of :meth:`RunSpec.run_dir`: the spec of a run folder (final, ablation or
    LR-search layout) and the ``base.runs_dir`` it lies under (the folder may have moved).
    ``params`` is the run's own resolved tree (an ablation folder names a variant, whose
    model it holds)."""
    from glsim.errors import RunError

    layout = (
        "runs/<dataset>/<model>/seed<S>, runs/<dataset>/ablation/<variant>/seed<S> or "
        "runs/<dataset>/lrsearch/<model>/lr<LR>/seed<S>"
    )
    seed_match = re.fullmatch(r"seed(\d+)", run_dir.name)
    parents = run_dir.parents
    if seed_match is None or len(parents) < 3:
        raise RunError(
            f"{run_dir}: cannot tell the run from the folder name; give a run folder ({layout})"
        )
    seed, parent = int(seed_match.group(1)), run_dir.parent
    if len(parents) >= 4 and parents[1].name == "ablation":
        entry = params.ablations.variants.get(parent.name)
        if entry is None:
            raise RunError(
                f"{run_dir}: ablation variant {parent.name!r} is not in the run's "
                "params.resolved.yaml (ablations.variants), so its model is unknown"
            )
        return RunSpec(entry.model, seed, kind="ablation", variant=parent.name), parents[3]
    lr_match = re.fullmatch(r"lr(.+)", parent.name)
    if len(parents) >= 5 and lr_match and parents[2].name == "lrsearch":
        try:
            lr = float(lr_match.group(1))
        except ValueError:
            raise RunError(f"{run_dir}: {parent.name!r} is not lr<LR>") from None
        return RunSpec(parents[1].name, seed, lr=lr, kind="lrsearch"), parents[4]
    return RunSpec(parent.name, seed), parents[2]


# Modules a fine-tuning run executes whose effect reaches it only through the prepared data
# (whose content is in the key: :func:`data_digest`) or not at all (tracking, progress, the
# run folder's claim).
RUN_CODE_EXCLUDES = (
    "glsim.data.datasets", "glsim.data.download", "glsim.data.extract", "glsim.data.manifest",
    "glsim.data.registry", "glsim.data.synthetic", "glsim.data.lrsearch", "glsim.data.splits",
    "glsim.validation", "glsim.tracking", "glsim.progress", "glsim.errors", "glsim.train.claim",
)  # fmt: skip
# Pretraining generates its data (glsim.data.synthetic is its data): only tracking is free.
PRETRAIN_CODE_EXCLUDES = ("glsim.tracking", "glsim.progress", "glsim.errors", "glsim.train.claim")


@functools.cache
def run_code_digest() -> str:
    """Digest of the code a fine-tuning run executes (:mod:`glsim.codebase`): the training
    entry point's import closure but :data:`RUN_CODE_EXCLUDES`."""
    from glsim.codebase import closure, code_digest

    return code_digest(closure(["glsim.train.run"], exclude=RUN_CODE_EXCLUDES))


@functools.cache
def pretrain_code_digest() -> str:
    """Digest of the code pretraining executes, generated upstream data included."""
    from glsim.codebase import closure, code_digest

    return code_digest(closure(["glsim.train.pretrain"], exclude=PRETRAIN_CODE_EXCLUDES))


@functools.cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    from glsim.data.shards import file_sha256

    return file_sha256(path)[:16]


def file_digest(path: str | Path | None) -> str | None:
    """The content hash of a file (None: no path given; ``"absent"``: no such file). Cached
    per process by path, size and modification time."""
    if path is None:
        return None
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return "absent"
    return _file_sha256(str(p.resolve()), st.st_size, st.st_mtime_ns)


def data_digest(params: Params, kind: RunKind = "final") -> str:
    """What the data a run trains on is, not where it came from: a hash of the class count
    and the train split's shards (each tar's sha256, which covers every image, label and
    the shard boundaries) in the shard index the run reads. A dataset corrected and
    re-sharded under the same source gets a new digest; ``"absent"`` before it is sharded."""
    from glsim.data.shards import read_index

    try:
        index = read_index(shard_source(params, kind))
    except Exception:  # not sharded yet (or unreadable): training says so itself
        return "absent"
    return _digest({"num_classes": index["num_classes"], "train": index["splits"]["train"]})


def execution_settings(params: Params) -> dict[str, object]:
    """The settings outside the recipe that change a run's bits: the numerics profile
    (``base.numerics``; ``portable`` trains in float32 on the CPU), the thread count, the
    deterministic switch, the loader's worker count (which sample streams a batch mixes),
    the resolved device type and the precision actually used. The torchrun world size is
    not among them: a finished run is not repeated for another N, and a killed run resumes
    only with the N it started with (:func:`glsim.train.loop.resume_or_start`)."""
    from glsim.utils import cpu_bf16_is_faster, resolve_device

    t = params.train
    device = resolve_device(params.base.device).type
    if device == "cuda":
        precision = "fp16" if t.amp else "fp32"
    elif params.base.numerics == "portable":
        precision = "fp32"  # bf16 rounds differently on AMX and AVX-512 BF16
    else:
        auto = t.cpu_amp == "auto" and cpu_bf16_is_faster()
        precision = "bf16" if t.cpu_amp == "bf16" or auto else "fp32"
    return {
        "numerics": params.base.numerics,
        "num_threads": params.base.num_threads,
        "deterministic": params.base.deterministic,
        "workers": params.data.workers,
        "device": device,
        "precision": precision,
    }


def run_key(params: Params, spec: RunSpec) -> str:
    """Hash of everything that determines a run's result (not its tracking or scheduling):
    the spec, the whole recipe (``train``), the backbone and its weights file's content, the
    model's own section, what the data is (:func:`data_digest`), the code the run executes
    (:func:`run_code_digest`) and the :func:`execution_settings`. A key added to any of those
    sections is part of the key automatically."""
    d = params.data
    section = getattr(params.model, spec.model, None)
    blob = {
        "spec": asdict(spec),
        "train": params.train.model_dump(mode="json"),
        "backbone": params.model.backbone.model_dump(mode="json", exclude={"weights"}),
        "weights": file_digest(params.model.backbone.weights),
        "model": section.model_dump(mode="json") if section is not None else {},
        "data": {
            "dataset": d.dataset,
            "content": data_digest(params, spec.kind),
            "image_size": d.image_size,
            "resize_ratio": d.resize_ratio,
        },
        "code": run_code_digest(),
        "execution": execution_settings(params),
    }
    return _digest(blob)


# keys of ``pretrain`` that do not change the weights: which DVC stages exist, and where the
# weights file is written
PRETRAIN_KEY_EXCLUDES = frozenset({"stages", "output"})


def pretrain_key(params: Params) -> str:
    """Hash of everything that determines the pretrained backbone: the ``pretrain`` section
    (but :data:`PRETRAIN_KEY_EXCLUDES`), the backbone's architecture, the image size,
    ``base.seed``, the code pretraining executes (:func:`pretrain_code_digest`) and the
    numerics profile, thread count, deterministic switch and device. A key added to
    ``pretrain`` is part of the key automatically. The backbone's ``weights`` are not:
    pretraining starts from random weights."""
    from glsim.utils import resolve_device

    bb = params.model.backbone
    exclude = set(PRETRAIN_KEY_EXCLUDES)
    if params.pretrain.task != "self_distillation":  # its section changes nothing then
        exclude.add("self_distillation")
    blob = {
        "pretrain": params.pretrain.model_dump(mode="json", exclude=exclude),
        "backbone": {"name": bb.name, "overrides": dict(bb.overrides)},
        "image_size": params.data.image_size,
        "seed": params.base.seed,
        "code": pretrain_code_digest(),
        "execution": {
            "numerics": params.base.numerics,
            "num_threads": params.base.num_threads,
            "deterministic": params.base.deterministic,
            "device": resolve_device(params.base.device).type,
        },
    }
    return _digest(blob)


def _digest(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# what dvc.yaml must declare


PRETRAIN_STAGE = "pretrain@backbone"


def report_stage(dataset: str, spec: RunSpec) -> str:
    """The DVC stage that writes the evaluation report of ``spec`` on ``dataset``
    (``dvc repro <stage>`` makes it, training the run first when due)."""
    if spec.kind == "ablation":
        return f"ablation@{dataset}-{spec.variant}-{spec.seed}"
    if spec.kind == "lrsearch":
        return f"lr_search@{dataset}-{spec.model}"
    return f"evaluate@{dataset}-{spec.model}-{spec.seed}"


def stage_outputs(params: Params) -> dict[str, set[Path]]:
    """Every DVC stage ``dvc.yaml`` generates from ``params``, with the paths it declares
    as ``outs`` or ``metrics`` (the test of ``dvc.yaml`` compares the two)."""
    out: dict[str, set[Path]] = {}
    if params.pretrain.stages:
        out[PRETRAIN_STAGE] = {
            params.pretrain.output, pretrain_dir(params), pretrain_report(params)
        }  # fmt: skip
    p = params
    for dataset in p.data.datasets:
        d = for_dataset(p, dataset)
        out[f"prepare@{dataset}"] = {raw_dir(d)}
        out[f"shard@{dataset}"] = {shards_dir(d)}
        out[f"validate@{dataset}"] = {validation_report(d)}
        out[f"probe@{dataset}"] = {probe_report(d), probe_explain(d)}
        for model in p.protocol.models:
            out[f"lr_search@{dataset}-{model}"] = {
                lr_search_dir(d, model), lr_report(d, model), lr_plot(d, model)
            }  # fmt: skip
            for seed in p.protocol.seeds:
                spec = RunSpec(model=model, seed=seed)
                out[f"train@{dataset}-{model}-{seed}"] = {spec.run_dir(d), spec.curve_path(d)}
                out[report_stage(dataset, spec)] = {
                    spec.report_path(d), spec.per_class_path(d), spec.explain_path(d)
                }  # fmt: skip
        for variant, v in p.ablations.variants.items():
            for seed in p.protocol.seeds:
                spec = RunSpec(model=v.model, seed=seed, kind="ablation", variant=variant)
                out[report_stage(dataset, spec)] = {
                    spec.run_dir(d), spec.report_path(d), spec.per_class_path(d),
                    spec.explain_path(d),
                }  # fmt: skip
    out["aggregate"] = set(results_paths(p).values()) | set(ledger_paths(p).values())
    out["cost"] = set(cost_paths(p).values())
    return out
