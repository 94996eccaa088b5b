"""``glsim.runs`` is the one home of run paths: every ``outs``/``metrics`` path that DVC
resolves from ``dvc.yaml`` is the path the stages write (``runs.stage_outputs``), for the
default params, two datasets, a user dataset with a variant, and moved output folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from glsim import runs
from glsim.config import load_params
from glsim.runs import RunSpec

ROOT = Path(__file__).resolve().parents[1]


def dvc_outputs(tmp_path: Path, params: dict) -> dict[str, set[Path]]:
    """Every stage of this repo's ``dvc.yaml`` under ``params``, with its outs and metrics,
    as DVC itself resolves the templates."""
    from dvc.repo import Repo

    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo_dir / "dvc.yaml")
    (repo_dir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    Repo.init(str(repo_dir), no_scm=True)
    with Repo(str(repo_dir)) as repo:
        return {
            stage.name: {Path(out.def_path) for out in stage.outs}
            for stage in repo.index.stages
        }


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def two_datasets() -> dict:
    p = default_params()
    p["data"]["datasets"] = {"synthetic_fg": {}, "cub": {"model.glsim.top_k": 12}}
    return p


def user_dataset_and_moved_folders() -> dict:
    p = default_params()
    p["data"]["datasets"] = {
        "solar": {"source": "imagefolder:/data/solar panels"},
        "plants": {"source": "csv:/data/plants/list.csv"},
    }
    p["data"]["dataset"] = "solar"
    p["base"].update(runs_dir="elsewhere/runs", reports_dir="out/reports")
    p["data"].update(raw_dir="/srv/raw", shards_dir="/srv/shards")
    p["protocol"].update(models=["vit", "glsim", "ffvt"], seeds=[7])
    p["ablations"]["variants"] = {"glsim_o4": {"model": "glsim", "set": {"model.glsim.top_k": 4}}}
    p["ablations"]["tables"] = {}
    p["pretrain"]["stages"] = []
    p["model"]["backbone"]["weights"] = "/weights/vit.npz"
    return p


@pytest.mark.parametrize(
    "make", [default_params, two_datasets, user_dataset_and_moved_folders], ids=lambda f: f.__name__
)
def test_dvc_yaml_declares_exactly_the_paths_the_stages_write(tmp_path, make):
    tree = make()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    params = load_params(tmp_path / "params.yaml")
    assert dvc_outputs(tmp_path, tree) == runs.stage_outputs(params)


def test_run_paths_and_keys(tmp_path):
    params = load_params(ROOT / "params.yaml")
    spec = RunSpec(model="glsim", seed=10, lr=0.03)
    assert spec.run_dir(params) == Path("runs/synthetic_fg/glsim/seed10")
    assert spec.report_path(params) == Path("reports/datasets/synthetic_fg/eval/glsim/seed10.json")
    search = RunSpec(model="vit", seed=1, lr=0.01, kind="lrsearch")
    assert search.run_dir(params) == Path("runs/synthetic_fg/lrsearch/vit/lr0.01/seed1")
    assert search.report_path(params).name == "val.json"
    # the key hashes the whole recipe: any train key changes it, tracking settings do not
    key = runs.run_key(params, spec)
    for change in ({"train.erasing_prob": 0.2}, {"train.amp": False}, {"model.glsim.top_k": 4}):
        assert runs.run_key(params.with_overrides(change), spec) != key, change
    for same in ({"base.experiment": "other"}, {"model.vit.cls_block": True}, {"protocol.seeds": [1]}):
        assert runs.run_key(params.with_overrides(same), spec) == key, same


def test_pretrain_key_hashes_what_the_pretrained_weights_depend_on():
    params = load_params(ROOT / "params.yaml")
    key = runs.pretrain_key(params)
    assert len(key) == 16 and key == runs.pretrain_key(load_params(ROOT / "params.yaml"))
    # every key of the pretrain section but stages/output changes it (new keys included)
    changed = {
        "task": "shape_colour" if params.pretrain.task == "colour" else "colour",
        "num_classes": params.pretrain.num_classes + 1,
        "images_per_epoch": params.pretrain.images_per_epoch + 1,
        "epochs": params.pretrain.epochs + 1,
        "batch_size": params.pretrain.batch_size + 1,
        "lr": params.pretrain.lr * 2,
        "weight_decay": params.pretrain.weight_decay + 0.01,
        "warmup_steps": params.pretrain.warmup_steps + 1,
        "label_smoothing": params.pretrain.label_smoothing + 0.05,
        "test_images": params.pretrain.test_images + 1,
    }
    # pretrain.self_distillation counts for that task only (tests/train/test_self_distillation.py)
    fields = set(type(params.pretrain).model_fields) - runs.PRETRAIN_KEY_EXCLUDES
    assert set(changed) == fields - {"self_distillation"}
    for name, value in changed.items():
        assert runs.pretrain_key(params.with_overrides({f"pretrain.{name}": value})) != key, name
    for change in (
        {"model.backbone.name": "vit_small_patch16_224"},
        {"model.backbone.overrides": {"depth": 2}},
        {"data.image_size": params.data.image_size // 2},
        {"base.seed": params.base.seed + 1},
    ):
        assert runs.pretrain_key(params.with_overrides(change)) != key, change
    # what does not change the weights: which stages exist, where they go, fine-tuning
    for same in (
        {"pretrain.stages": []},
        {"pretrain.output": "elsewhere/backbone.safetensors"},
        {"train.lr": params.train.lr * 2},
        {"train.epochs": params.train.epochs + 1},
        {"model.backbone.weights": "/weights/other.npz"},
        {"model.glsim.top_k": 4},
        {"protocol.seeds": [1]},
        {"base.experiment": "other"},
        {"data.resize_ratio": 1.0},
    ):
        assert runs.pretrain_key(params.with_overrides(same)) == key, same


def test_a_run_folder_names_its_spec_back(tmp_path):
    params = load_params(ROOT / "params.yaml").with_overrides({"base.runs_dir": str(tmp_path / "r")})
    for spec in (
        RunSpec(model="glsim", seed=10),
        RunSpec(model="vit", seed=1, lr=0.01, kind="lrsearch"),
        RunSpec(model="glsim", seed=100, kind="ablation", variant="glsim_random_no_aggregator"),
    ):
        found, root = runs.spec_of_run_dir(spec.run_dir(params), params)
        assert (found.model, found.seed, found.kind, found.variant) == (
            spec.model, spec.seed, spec.kind, spec.variant,
        ) and root == params.base.runs_dir  # fmt: skip
        assert found.lr == spec.lr
    from glsim.errors import RunError

    with pytest.raises(RunError, match="cannot tell the run"):
        runs.spec_of_run_dir(tmp_path / "somewhere", params)


def test_dvc_plots_show_draws_the_curves_lr_searches_and_results(tmp_path, monkeypatch):
    """The files the train, lr_search and aggregate stages write are what the top-level
    ``plots:`` of ``dvc.yaml`` reads: ``dvc plots show`` renders each without an error."""
    import json
    import subprocess
    import sys

    from glsim.config import for_dataset
    from glsim.protocol.lr_search import record_lr_choice
    from glsim.protocol.report import aggregate_reports
    from glsim.protocol.specs import final_spec
    from glsim.train.run import write_curve
    from glsim.utils import atomic_write_json

    tree = default_params()
    tree["ablations"] = {"variants": {}, "tables": {}}
    repo = tmp_path / "repo"
    dvc_outputs(tmp_path, tree)  # a DVC repo with this dvc.yaml and params.yaml
    monkeypatch.chdir(repo)
    params = for_dataset(load_params(repo / "params.yaml"), "synthetic_fg")
    curves = []
    for model in params.protocol.models:
        record_lr_choice(params, model, {"0.03": 40.0, "0.01": 55.5})
        for seed in params.protocol.seeds:
            history = [
                {"epoch": float(e), "train/loss": 2.0 / e, "train/acc": 30.0 * e} for e in (1, 2)
            ]
            spec = RunSpec(model=model, seed=seed)
            curves.append(write_curve(history, spec.curve_path(params)))
            key = runs.run_key(params, final_spec(params, model, seed))
            report = {"dataset": "synthetic_fg", "model": model, "seed": seed, "lr": 0.01,
                      "run_key": key}  # fmt: skip
            atomic_write_json(spec.report_path(params), {**report, "top1": 50.0 + seed})
    aggregate_reports(params, track=False)
    for png in ("accuracy_vs_throughput", "accuracy_vs_memory"):  # the cost stage's images
        (repo / f"reports/cost/{png}.png").parent.mkdir(parents=True, exist_ok=True)
        (repo / f"reports/cost/{png}.png").write_bytes(b"\x89PNG\r\n\x1a\n")

    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "--json"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    plots = json.loads(shown.stdout)
    assert "errors" not in plots, plots["errors"]
    drawn = {
        path: entries[0]["content"]["data"]["values"]
        for path, entries in plots["data"].items()
        if not path.endswith(".png")
    }
    assert {p for p in plots["data"] if p.endswith(".png")} == {
        "reports/cost/accuracy_vs_throughput.png", "reports/cost/accuracy_vs_memory.png"
    }
    assert set(drawn) == {
        *(str(c) for c in curves),
        *(f"reports/plots/lr_search/synthetic_fg/{m}.json" for m in params.protocol.models),
        "reports/plots/results.json",
    }
    loss = [row for row in drawn[str(curves[0])] if row["field"] == "loss"]
    assert [(row["epoch"], row["loss"]) for row in loss] == [(1, 2.0), (2, 1.0)]
    bars = drawn["reports/plots/results.json"]
    assert {row["run"]: row["top1_mean"] for row in bars} == {
        "synthetic_fg/vit": 87.0, "synthetic_fg/glsim": 87.0
    }  # fmt: skip
