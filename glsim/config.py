"""One typed params tree for the whole project, loaded from ``params.yaml``.

Every stage, flow and test reads its settings from :class:`Params`. Unknown keys are an
error that names the key and the closest valid one; wrong types name the key and value.
The resolved tree is written next to each stage's outputs (:func:`write_resolved`) and
logged to MLflow, as timm writes ``args.yaml`` and DINOv2 writes its config.

This module imports nothing of glsim but the models' torch-free choice types: loading and
checking a params file loads no torch. What needs the model registry (is a model name
registered?) is :func:`check_params`, which loads the models only when called.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from glsim.models.choices import Metric, Selector  # torch-free: the models' own choice types

AugRegLevel = Literal["minimal", "weak", "medium", "strong"]
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
SOURCE_KEY = "source"  # the data.datasets entry keys that are not dotted overrides
ALLOWED_ROOTS_KEY = "allowed_roots"
MOVED_KEYS = {"train.models": "protocol.models", "train.seeds": "protocol.seeds"}


class ParamsError(ValueError):
    """A params file or override is invalid; the message names the key, value and fix."""


def check_dataset_name(name: str, key: str) -> str:
    """A dataset name becomes folder, stage and run names: letters, digits, ``_`` and ``-``."""
    if not DATASET_NAME.fullmatch(str(name)):
        family, sep, rest = str(name).partition(":")
        example = Path(rest).stem if sep else re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_")
        example = re.sub(r"[^A-Za-z0-9_-]+", "_", example).strip("_") or "mydata"
        hint = (
            f"name it and give the source: data.datasets: {{{example}: {{source: '{name}'}}}}"
            if sep
            else f"use letters, digits, '_' and '-' only, e.g. {example!r}"
        )
        raise ValueError(
            f"{key}: {name!r} is not a plain dataset name (it names folders and DVC stages); {hint}"
        )
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class BaseParams(_Strict):
    """Settings shared by every stage."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(
        2,
        ge=0,
        description="torch intra-op threads; results depend on it (README Reproducibility); "
        "0 = torch's default, the cores this process may use (differs between machines)",
    )
    deterministic: bool = Field(
        False,
        description="torch.use_deterministic_algorithms (warn only), and on CUDA cuDNN without "
        "autotuning and a fixed cuBLAS workspace; CPU runs are repeatable without it",
    )
    numerics: Literal["native", "portable"] = Field(
        "native",
        description="CPU code paths: native = the fastest this CPU has (weights differ between "
        "CPU generations); portable = torch, oneDNN and MKL pinned to AVX2 and float32 "
        "training, so every x86-64 host with AVX2 gives the same bits, at a cost in speed "
        "(README Reproducibility, glsim/numerics.py)",
    )
    compile: bool = Field(
        False,
        description="torch.compile the training step (forward and loss): for long GPU runs "
        "(1.34-1.37x per step measured on an H100). An execution choice, not in the run key: "
        "a compiled and an eager run of one configuration are the same run, and either "
        "resumes the other",
    )
    experiment: str = "glsim"
    reports_dir: Path = Path("reports")
    runs_dir: Path = Path("runs")


class SyntheticParams(_Strict):
    """The built-in fine-grained dataset (see :mod:`glsim.data.synthetic`)."""

    num_classes: int = Field(10, ge=2, le=64)
    train_per_class: int = Field(160, ge=1)
    test_per_class: int = Field(60, ge=1)
    canvas_size: int = Field(86, ge=16, description="side of the generated square image, px")
    object_size: tuple[int, int] = (14, 22)
    distractors: tuple[int, int] = (2, 5)
    detail: Literal["colour", "pattern"] = Field(
        "colour",
        description="what tells the classes apart: the hue of a small spot, or a 3x3 dot pattern",
    )
    marking_scale: float = Field(
        0.2, gt=0, le=0.3, description="spot side (or dot pitch) / object side"
    )
    marking_distance: int = Field(
        2, ge=1, le=5, description="min cells in which two classes' markings differ"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check_ranges(self) -> SyntheticParams:
        lo, hi = self.object_size
        if not 6 <= lo <= hi:
            raise ValueError(
                f"object_size must be (min, max) with 6 <= min <= max, got {self.object_size}"
            )
        if hi * 2 > self.canvas_size:
            raise ValueError(
                f"object_size max {hi} must be at most half of canvas_size {self.canvas_size} so the "
                "object survives the random crop; raise canvas_size or lower object_size"
            )
        if not 0 <= self.distractors[0] <= self.distractors[1]:
            raise ValueError(
                f"distractors must be (min, max) with 0 <= min <= max, got {self.distractors}"
            )
        return self


class ExpectedCounts(_Strict):
    """What the validation suite expects of a prepared dataset (None: not checked)."""

    num_classes: int | None = None
    train: int | None = None
    test: int | None = None


class DataParams(_Strict):
    datasets: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"synthetic_fg": {}},
        description="the datasets the protocol runs on, by plain name, each with an optional "
        "`source` (a registered dataset, imagefolder:PATH or csv:FILE; default: the name) and "
        "dotted param overrides (e.g. dogs: {model.glsim.top_k: 16}); DVC generates every "
        "stage per dataset and every folder is named by the dataset's name",
    )
    dataset: str = Field(
        "synthetic_fg", description="the dataset a stage works on (set by --dataset)"
    )
    source: str | None = Field(
        None,
        description="where the current dataset comes from (set from its data.datasets entry): "
        "a registered name, imagefolder:PATH or csv:FILE; None: the registered dataset `dataset`",
    )
    allowed_roots: list[Path] = Field(
        default_factory=list,
        description="folders besides its own root (the image folder; the CSV's folder) that a "
        "user dataset's images may lie in, after following symlinks (set from its data.datasets "
        "entry, e.g. mine: {source: 'csv:/data/list.csv', allowed_roots: [/mnt/photos]}); an "
        "image anywhere else is refused at prepare",
    )
    raw_dir: Path = Path("data/raw")
    shards_dir: Path = Path("data/shards")
    shards_url: str | None = Field(
        None,
        description="read the shards for training and evaluation from this fsspec URL "
        "(s3://bucket/shards, gs://..., http://host/shards, file:///nfs/shards) instead of "
        "shards_dir; it holds shards_dir's layout (<dataset>/...), e.g. after `aws s3 sync "
        "data/shards s3://bucket/shards`. The shard and validate stages still write and "
        "read shards_dir",
    )
    image_size: int = Field(64, ge=16)
    resize_ratio: float = Field(1.34, ge=1.0, description="resize to int(S*ratio), then crop S")
    workers: int = Field(0, ge=0)
    shard_max_count: int = Field(10_000, ge=1)
    shard_max_bytes: int = Field(256 * 1024**2, ge=1024)
    min_image_side: int = Field(16, ge=1)
    expected: ExpectedCounts = ExpectedCounts()
    registry_overrides: Path | None = None
    synthetic: SyntheticParams = SyntheticParams()

    @model_validator(mode="after")
    def _check_names(self) -> DataParams:
        for name, entry in self.datasets.items():
            check_dataset_name(name, "data.datasets")
            if not isinstance(entry, dict):
                raise ValueError(
                    f"data.datasets.{name} must be a mapping ({{source: ..., dotted.key: value}}), "
                    f"got {entry!r}"
                )
            source = entry.get(SOURCE_KEY)
            if source is not None and (not isinstance(source, str) or not source.strip()):
                raise ValueError(
                    f"data.datasets.{name}.source must be a dataset name, imagefolder:PATH or "
                    f"csv:FILE, got {source!r}"
                )
            roots = entry.get(ALLOWED_ROOTS_KEY, [])
            if not isinstance(roots, list) or not all(isinstance(r, str) and r for r in roots):
                raise ValueError(
                    f"data.datasets.{name}.{ALLOWED_ROOTS_KEY} must be a list of folders, "
                    f"got {roots!r}"
                )
        check_dataset_name(self.dataset, "data.dataset")
        return self

    @property
    def dataset_source(self) -> str:
        """The registry source of the current dataset (its ``source``, else its name)."""
        return self.source or self.dataset


class BackboneParams(_Strict):
    """A timm VisionTransformer by name plus constructor overrides, and its weights file."""

    name: str = "vit_base_patch16_224"
    overrides: dict[str, Any] = Field(default_factory=dict)
    weights: Path | None = None


class GLSimParams(_Strict):
    """The GLSim-specific knobs (paper Sec. 3 and the ablations of Tables 5, 12-15)."""

    top_k: int = Field(8, ge=1, description="O: how many most-similar tokens the crop encloses")
    metric: Metric = "cosine"
    selector: Selector = "gls"
    aggregator: bool = True
    min_box: int = Field(0, ge=0, description="minimum crop side in pixels (0: no minimum)")
    align_corners: bool = Field(
        True,
        description="crop resize convention: True is the reference code's "
        "F.upsample_bilinear (corner pixels to corner pixels), False half-pixel centres",
    )
    aggregator_drop_path: bool = Field(
        True,
        description="stochastic depth on the aggregator block at the recipe's drop-path "
        "rate (reference code)",
    )
    token_drop: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="probability that the crop's CLS token is zeroed before the aggregator "
        "in training (reference code: Dropout1d, 0.2)",
    )


class VitParams(_Strict):
    """The ViT baseline's knobs."""

    cls_block: bool = Field(
        False, description="Table 5: one extra transformer block on the CLS token only"
    )


class TransFGParams(_Strict):
    """TransFG (He et al., AAAI 2022): overlapping patches with this stride (None: 3/4 P)."""

    stride: int | None = Field(None, ge=1)


class FFVTParams(_Strict):
    """FFVT (Wang et al., BMVC 2021): MAWS tokens kept per layer."""

    tokens_per_layer: int = Field(12, ge=1)


class ResNetParams(_Strict):
    """ResNet-101 (He et al., CVPR 2016): a local weights file (None: random init)."""

    weights: Path | None = None


class CALParams(_Strict):
    """CAL (Rao et al., ICCV 2021) on ResNet-101: weights file and attention maps."""

    weights: Path | None = None
    num_attentions: int = Field(32, ge=1)


class ModelParams(_Strict):
    """The shared backbone plus one section per model (a train stage reads only its own)."""

    backbone: BackboneParams = BackboneParams()
    vit: VitParams = VitParams()
    glsim: GLSimParams = GLSimParams()
    transfg: TransFGParams = TransFGParams()
    ffvt: FFVTParams = FFVTParams()
    resnet101: ResNetParams = ResNetParams()
    cal: CALParams = CALParams()


PretrainTask = Literal["shape_colour", "colour", "self_distillation"]


class SelfDistillationParams(_Strict):
    """``pretrain.task: self_distillation`` (DINO, :mod:`glsim.train.self_distillation`):
    no labels; defaults sized for the small built-in backbone at 64 px."""

    images: Literal["shape_colour", "colour"] = Field(
        "colour",
        description="the generated task whose images it trains on; its labels serve the "
        "k-NN evaluation only",
    )
    global_crops: int = Field(2, ge=1)
    local_crops: int = Field(4, ge=0)
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.4)
    local_size: int = Field(32, ge=1, description="local crops' side, px (a multiple of the patch)")
    out_dim: int = Field(1024, ge=2, description="K, the projection head's output width")
    hidden_dim: int = Field(256, ge=1)
    bottleneck_dim: int = Field(64, ge=1)
    teacher_temp: float = Field(0.04, gt=0)
    student_temp: float = Field(0.1, gt=0)
    momentum: float = Field(0.996, ge=0, le=1, description="teacher EMA, cosine to 1 over the run")
    centre_momentum: float = Field(0.9, ge=0, lt=1)
    knn_k: int = Field(20, ge=1, description="neighbours of the k-NN upstream accuracy")

    @model_validator(mode="after")
    def _views(self) -> SelfDistillationParams:
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(
                    f"pretrain.self_distillation.{name} {[lo, hi]}: needs 0 < low <= high <= 1"
                )
        if self.global_crops + self.local_crops < 2:
            raise ValueError(
                "pretrain.self_distillation: global_crops + local_crops must be at least 2 "
                "(the loss compares a teacher view with another student view)"
            )
        return self


class PretrainParams(_Strict):
    """Upstream pretraining of the backbone on a generated task (stand-in for IN-21k)."""

    task: PretrainTask = Field(
        "colour",
        description="supervised on a generated label (colour, shape_colour) or "
        "self_distillation (no labels; see self_distillation)",
    )
    num_classes: int = Field(12, ge=2)
    images_per_epoch: int = Field(8192, ge=1)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(200, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    test_images: int = Field(1024, ge=1)
    output: Path = Path("models/pretrained/backbone.safetensors")
    self_distillation: SelfDistillationParams = Field(default_factory=SelfDistillationParams)
    stages: list[Literal["backbone"]] = Field(
        default_factory=lambda: ["backbone"],
        description="DVC generates the pretrain stage per item: [] skips it (real weights file)",
    )


@dataclass(frozen=True)
class Regularisation:
    """What an AugReg level switches on (Table 11): the values the recipe trains with."""

    label_smoothing: float
    drop_path: float
    erasing_prob: float
    trivial_augment: bool


class TrainParams(_Strict):
    """The fine-tuning recipe (paper Sec. 4, App. C), and nothing else: every key here
    changes a run's result, so the run key hashes the whole section and every training
    stage of ``dvc.yaml`` depends on all of it. Which models and seeds run, and the LR each
    trains with, are the protocol's (:class:`ProtocolParams`)."""

    epochs: int = Field(50, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(0.01, gt=0, description="the LR when protocol.lr_grid is empty")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(500, ge=0)
    clip_grad: float | None = Field(1.0, gt=0)
    augreg: AugRegLevel = "strong"
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="used from augreg 'weak' up")
    drop_path: float = Field(0.1, ge=0, lt=1, description="used from augreg 'medium' up")
    erasing_prob: float = Field(0.3, ge=0, le=1, description="used at augreg 'strong'")
    amp: bool = Field(True, description="CUDA: float16 autocast with a gradient scaler")
    cpu_amp: Literal["off", "bf16", "auto"] = Field(
        "auto",
        description="CPU: bfloat16 autocast of the training forward pass; auto: when the CPU "
        "has native bf16 (avx512_bf16 or amx_bf16), else float32. Evaluation stays float32",
    )

    @field_validator("cpu_amp", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare ``off``/``on`` as a boolean: ``cpu_amp: off`` (or ``--set
        train.cpu_amp=off``) means "off", and ``on`` means "bf16"."""
        if isinstance(value, bool):
            return "bf16" if value else "off"
        return value

    def regularisation(self) -> Regularisation:
        """Resolve the AugReg level into the values it switches on (Table 11)."""
        level = ["minimal", "weak", "medium", "strong"].index(self.augreg)
        return Regularisation(
            label_smoothing=self.label_smoothing if level >= 1 else 0.0,
            drop_path=self.drop_path if level >= 2 else 0.0,
            erasing_prob=self.erasing_prob if level >= 3 else 0.0,
            trivial_augment=level >= 3,
        )


class ProtocolParams(_Strict):
    """The paper's protocol (App. C): which models run, an LR search on a train/val split
    per model, then one run per seed at the chosen LR."""

    models: list[str] = Field(
        default_factory=lambda: ["vit", "glsim"], description="registered model names"
    )
    seeds: list[int] = Field(default_factory=lambda: [1, 10, 100])
    lr_grid: list[float] = Field(
        default_factory=lambda: [0.03, 0.01, 0.003, 0.001],
        description="the LR search grid; [] skips the search and trains with train.lr",
    )
    search_seed: int = 1
    search_epochs: int | None = Field(None, ge=1, description="None: train.epochs")
    search_train_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="share of each class's train images the LR search trains on (the rest is "
        "its val part); None: the paper's rule, 0.8, or 0.2 for a dataset over 50,000 train "
        "images (DAFB, Food, iNat17)",
    )

    @model_validator(mode="after")
    def _check_grid(self) -> ProtocolParams:
        if any(lr <= 0 for lr in self.lr_grid):
            raise ValueError(f"lr_grid must hold positive LRs, got {self.lr_grid}")
        return self


class Variant(_Strict):
    """An ablation run: a registered model plus dotted param overrides."""

    model: str
    set: dict[str, Any] = Field(default_factory=dict)


class TableSpec(_Strict):
    """An ablation table: each row label maps to one run reference per column.

    A reference is a main model (a ``train.models`` entry) or an ablation variant name.
    """

    title: str
    columns: list[str]
    rows: dict[str, list[str]]

    @model_validator(mode="after")
    def _check_shape(self) -> TableSpec:
        for label, refs in self.rows.items():
            if len(refs) != len(self.columns):
                raise ValueError(
                    f"row {label!r} has {len(refs)} cells for {len(self.columns)} columns"
                )
        return self


class AblationParams(_Strict):
    """Ablation runs (Tables 5, 11-15) and the tables they fill."""

    variants: dict[str, Variant] = Field(default_factory=dict)
    tables: dict[str, TableSpec] = Field(default_factory=dict)


class EvalParams(_Strict):
    batch_size: int = Field(64, ge=1)


class CostParams(_Strict):
    """The ``cost`` stage, and the defaults of ``glsim cost bench``: inference throughput and
    peak memory per model at each image size and batch size, best batch per model (paper
    Sec. 5.3, Figs. 4 and 7), and each DFSM's wall time beside the backbone forward on
    ``model.backbone`` (Table 1, measured). Models run at random weights."""

    models: list[str] = Field(
        default_factory=lambda: ["vit", "glsim", "transfg", "ffvt"],
        min_length=1,
        description="registered model names",
    )
    image_sizes: list[int] = Field(default_factory=lambda: [64], min_length=1)
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 8, 32],
        min_length=1,
        description="tried in increasing order (paper: 1..256); one that would not fit is not run",
    )
    repeats: int = Field(3, ge=1)
    warmup: int = Field(1, ge=0, description="untimed calls per model and batch size")
    min_time: float = Field(0.1, ge=0, description="seconds per timed measurement (>= 1 call)")
    amp: bool = Field(False, description="forwards under bfloat16 autocast")
    num_classes: int = Field(200, ge=1, description="head width (200: CUB, as the paper)")
    max_memory_fraction: float = Field(
        0.5, gt=0, le=1, description="CPU: skip a batch expected to need more of the free RAM"
    )
    dfsm_image_sizes: list[int] = Field(
        default_factory=lambda: [64], min_length=1, description="DFSM timing image sizes"
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> CostParams:
        for key in ("image_sizes", "batch_sizes", "dfsm_image_sizes"):
            bad = [v for v in getattr(self, key) if v < 1]
            if bad:
                raise ValueError(f"cost.{key} must hold positive sizes, got {getattr(self, key)}")
        return self


class CurveParams(_Strict):
    """The localisation curve (``curve/dvc.yaml``): the upstream pretraining repeated with
    each of ``tasks`` (as ``pretrain.task``) and each of ``seeds`` (as ``base.seed``) for
    ``epochs`` epochs, the weights kept after every epoch and each snapshot probed
    (:mod:`glsim.protocol.curve`). The rest of the recipe is ``pretrain``'s."""

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    epochs: int | dict[PretrainTask, Annotated[int, Field(ge=1)]] = Field(
        12,
        description="pretraining epochs along the curve: one number for every task, or one "
        "per task (tasks whose steps cost more get fewer epochs for the same wall time)",
    )
    every: int = Field(1, ge=1, description="probe every this many epochs (and at 0 and the end)")
    tasks: list[PretrainTask] = Field(
        default_factory=lambda: ["colour", "self_distillation"],
        min_length=1,
        description="the upstream tasks (as pretrain.task), each pretrained and probed",
    )

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"curve.tasks {value}: name each task once")
        return value

    @model_validator(mode="after")
    def _epochs_per_task(self) -> CurveParams:
        if isinstance(self.epochs, int):
            if self.epochs < 1:
                raise ValueError(f"curve.epochs {self.epochs}: give at least 1")
        elif missing := [t for t in self.tasks if t not in self.epochs]:
            raise ValueError(
                f"curve.epochs has no entry for {', '.join(missing)}: give one per task of "
                f"curve.tasks ({', '.join(self.tasks)}), or one number for all"
            )
        return self

    def epochs_for(self, task: str) -> int:
        """The pretraining epochs of ``task``'s curve."""
        return self.epochs if isinstance(self.epochs, int) else self.epochs[task]


class RegistryParams(_Strict):
    """MLflow model registry promotion (``glsim registry promote``; no DVC stage reads it)."""

    margin: float = Field(
        0.0,
        ge=0,
        description="percentage points of val top-1 (the LR search's, at the chosen LR) a new "
        "version must beat the champion's by to take the `champion` alias",
    )
    name_template: str = Field(
        "glsim-{dataset}-{model}",
        description="registered model name; {dataset} and {model} are filled in",
    )

    @field_validator("name_template")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        try:
            value.format(dataset="d", model="m")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"registry.name_template {value!r}: only {{dataset}} and {{model}} may be "
                f"filled in ({type(err).__name__}: {err})"
            ) from None
        return value


class Params(_Strict):
    """The whole params tree: one section per stage plus the shared ``base``."""

    base: BaseParams = BaseParams()
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    pretrain: PretrainParams = PretrainParams()
    train: TrainParams = TrainParams()
    protocol: ProtocolParams = ProtocolParams()
    ablations: AblationParams = AblationParams()
    eval: EvalParams = EvalParams()
    registry: RegistryParams = RegistryParams()
    cost: CostParams = CostParams()
    curve: CurveParams = CurveParams()

    @model_validator(mode="after")
    def _check_references(self) -> Params:
        """References inside the tree (model names are checked against the registry by
        :func:`check_params`, which needs the models)."""
        for name in self.ablations.variants:
            if name in self.protocol.models:
                raise ValueError(
                    f"ablations.variants.{name}: the name is a main model; pick another"
                )
        runs = set(self.protocol.models) | set(self.ablations.variants)
        for tname, table in self.ablations.tables.items():
            for label, refs in table.rows.items():
                for ref in refs:
                    if ref not in runs:
                        raise ValueError(
                            f"ablations.tables.{tname}.rows.{label}: {ref!r} is neither in "
                            "protocol.models nor in ablations.variants"
                        )
        return self

    def with_overrides(self, overrides: dict[str, Any], *, source: str = "overrides") -> Params:
        """A new tree with dotted overrides applied (``{"train.lr": 0.1}``), validated; the
        one way every layer applies overrides (``--set``, per-dataset entries, variants)."""
        data = _deep_merge(self.model_dump(mode="json"), dotted_to_nested(overrides))
        return params_from_dict(data, source=source)

    def digest(self, *sections: str) -> str:
        """Short stable hash of the named sections (all when none given)."""
        data = self.model_dump(mode="json")
        if sections:
            data = {s: data[s] for s in sections}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# ---------------------------------------------------------------------------------------
# loading


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid field names of the sub-model that ``loc`` (minus its last item) points into."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        current = fields[part].annotation
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _format_errors(err: ValidationError, source: str) -> str:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            valid = _fields_at(Params, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""
            if key in MOVED_KEYS:
                hint = f"; it moved to '{MOVED_KEYS[key]}'"
            problems.append(f"unknown key '{key}'{hint} (valid here: {', '.join(valid)})")
        elif e["type"] == "value_error":  # our validators: the message names key and value
            msg = str(e["msg"]).removeprefix("Value error, ")
            named = not key or msg.startswith(key.split(".")[0])
            problems.append(msg if named else f"{key}: {msg}")
        else:
            shown = repr(e.get("input"))
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            problems.append(f"{key} = {shown}: {e['msg']}")
    fix = "fix the key or value in the params file (see params.yaml for every valid key)"
    if len(problems) == 1:
        return f"{source}: {problems[0]}; {fix}"
    lines = [f"{source}: invalid params ({len(problems)} problems):"]
    lines += [f"  - {p}" for p in problems]
    lines.append(fix[0].upper() + fix[1:] + ".")
    return "\n".join(lines)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def dotted_to_nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 0.1}`` -> ``{"train": {"lr": 0.1}}``."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def params_from_dict(data: dict[str, Any], *, source: str = "<params>") -> Params:
    """Validate a plain dict into :class:`Params`, with readable errors."""
    if not isinstance(data, dict):
        raise ParamsError(
            f"{source}: the top level must be a mapping of sections, got {type(data).__name__}"
        )
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_format_errors(err, source)) from None


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.03", ...]`` (``--set`` arguments) -> ``{"train.lr": 0.03}``; values
    are YAML, so numbers, lists and mappings keep their type."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=0.03")
        overrides[key] = yaml.safe_load(value)
    return overrides


def load_params(
    path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None
) -> Params:
    """Load ``params.yaml`` (and optional dotted overrides such as ``{"train.lr": 0.1}``)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(
            f"params file not found: {path} (run from the repo root or pass --params)"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ParamsError(
            f"{path}: the top level must be a mapping of sections, got {type(data).__name__}"
        )
    params = params_from_dict(data, source=str(path))
    return params.with_overrides(overrides, source=f"{path} + --set") if overrides else params


def for_dataset(params: Params, name: str) -> Params:
    """The params a stage uses for dataset ``name``: its ``data.datasets`` overrides applied."""
    if name not in params.data.datasets:
        close = difflib.get_close_matches(name, list(params.data.datasets), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ParamsError(
            f"dataset {name!r} is not in data.datasets{hint} (listed: {sorted(params.data.datasets)})"
        )
    entry = dict(params.data.datasets[name])
    seeds = entry.get("protocol.seeds")
    if isinstance(seeds, list) and not set(seeds) <= set(params.protocol.seeds):
        raise ParamsError(
            f"data.datasets.{name}: protocol.seeds {seeds} must be a subset of protocol.seeds "
            f"{params.protocol.seeds} (DVC generates the runs of every seed there and each "
            "dataset runs those of its own list); add the missing seeds to protocol.seeds"
        )
    overrides = {
        "data.dataset": name,
        "data.source": entry.pop(SOURCE_KEY, None),
        "data.allowed_roots": entry.pop(ALLOWED_ROOTS_KEY, []),
        **entry,
    }
    return params.with_overrides(overrides, source=f"data.datasets.{name}")


def params_parser() -> argparse.ArgumentParser:
    """The options every command that reads a params file takes, spelled and parsed the same
    way everywhere (``parents=[params_parser()]``): ``--params FILE`` (default
    ``params.yaml``), ``--set KEY=VALUE`` (repeatable, :func:`parse_sets`) and ``--debug``
    (the traceback of an input error instead of its one line)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a param, e.g. train.lr=0.03 (repeatable)",
    )  # fmt: skip
    p.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    return p


def params_of_args(args: argparse.Namespace) -> Params:
    """The params tree of :func:`params_parser`'s options."""
    return load_params(args.params, parse_sets(args.set))


def write_resolved(params: Params, out_dir: str | Path, name: str = "params.resolved.yaml") -> Path:
    """Write the resolved tree next to a stage's outputs (atomically)."""
    from glsim.utils import atomic_write_text

    out = Path(out_dir) / name
    atomic_write_text(out, yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return out


def _check_backbone(params: Params) -> None:
    """``model.backbone`` builds a timm ViT (checked on the meta device: no memory, no
    weights) whose patches tile ``data.image_size`` exactly: a size that is not a multiple
    of the patch size leaves its last pixels unseen by every patch."""
    import timm
    import torch

    from glsim.models.backbone import create_vit

    bb, size = params.model.backbone, params.data.image_size
    if not timm.is_model(bb.name):
        close = difflib.get_close_matches(bb.name, timm.list_models(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ParamsError(
            f"model.backbone.name: timm has no model {bb.name!r}; {hint}"
            "(timm.list_models('vit_*') lists the ViTs); fix it in the params file"
        )
    try:
        with torch.device("meta"):
            model = create_vit(bb.name, image_size=size, **bb.overrides)
    except ValueError as err:
        raise ParamsError(str(err)) from None
    patch = model.patch_embed.patch_size[0]
    if size % patch:
        lower, upper = size - size % patch, size - size % patch + patch
        sizes = f"{lower} or {upper}" if lower >= 16 else str(upper)
        raise ParamsError(
            f"data.image_size {size} is not a multiple of the backbone's patch size {patch} "
            f"({bb.name}{' with model.backbone.overrides' if 'patch_size' in bb.overrides else ''}): "
            f"the last {size % patch} px of each side would never be seen; use {sizes}"
        )


def check_params(params: Params) -> Params:
    """Model names in ``protocol.models`` and ``ablations.variants`` must be registered, and
    when a ViT model is among them, ``model.backbone`` must build one that tiles
    ``data.image_size`` (the checks that load the model registry and timm, so not
    validators of the tree)."""
    from glsim.models.registry import list_models, model_options

    known = list_models()
    for name in params.protocol.models:
        if name not in known:
            raise ParamsError(
                f"protocol.models: unknown model {name!r} (registered: {', '.join(known)}); "
                "fix it in the params file"
            )
    for name, variant in params.ablations.variants.items():
        if variant.model not in known:
            raise ParamsError(
                f"ablations.variants.{name}.model: unknown model {variant.model!r} "
                f"(registered: {', '.join(known)}); fix it in the params file"
            )
    models = set(params.protocol.models) | {v.model for v in params.ablations.variants.values()}
    if any("backbone" in model_options(m) for m in models):
        _check_backbone(params)
    return params
