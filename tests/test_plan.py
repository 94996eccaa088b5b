"""``glsim plan`` counts the runs, images and GPU-hours of the paper's protocol
(configs/paper.yaml) by App. C's rules and skips a run finished under its run key;
per-dataset seeds and LR-search share work end to end; the training-step bench writes the
table the plan reads; configs/paper.yaml drives ``dvc.yaml``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import TINY_VIT, tiny_params

from glsim import runs
from glsim.cli import main
from glsim.config import ParamsError, for_dataset, load_params
from glsim.protocol.data import prepare, shard
from glsim.protocol.plan import plan_runs, read_throughput, summarise
from glsim.protocol.report import aggregate_reports
from glsim.protocol.train import skip_unlisted_seed, train_final
from glsim.runs import RunSpec

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs/paper.yaml"
DATASETS = {"cub", "dafb", "dogs", "flowers", "food", "inat17", "moe", "nabirds", "pets", "vegfru"}
TWO_SEEDS = {"dafb", "food", "inat17"}
MODELS = ["vit", "glsim", "transfg", "ffvt", "resnet101", "cal"]


def plan_json(capsys, *args: str) -> dict:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_of_the_paper_protocol_follows_app_c(tmp_path, capsys):
    table = tmp_path / "train_step.csv"
    rates = {
        "vit": 100.0,
        "glsim": 50.0,
        "transfg": 30.0,
        "ffvt": 60.0,
        "resnet101": 120.0,
        "cal": 40.0,
    }
    table.write_text(
        "model,image_size,batch_size,images_per_s\n"
        + "".join(f"{m},448,8,{r}\n" for m, r in rates.items())
        + "vit,448,64,999\n"  # another batch size: not the runs' batch of 8
    )
    plan = plan_json(capsys, "--params", str(PAPER), "--throughput", str(table))
    rows = plan["runs"]
    assert {r["dataset"] for r in rows} == DATASETS
    assert set(plan["sources"].values()) == {"registry"}  # nothing prepared here
    params = load_params(PAPER)
    variants = list(params.ablations.variants)
    for dataset in DATASETS:
        seeds = [1, 10] if dataset in TWO_SEEDS else [1, 10, 100]
        for model in MODELS:
            search = [
                r
                for r in rows
                if (r["dataset"], r["kind"], r["model"]) == (dataset, "lrsearch", model)
            ]
            final = [
                r
                for r in rows
                if (r["dataset"], r["kind"], r["model"]) == (dataset, "final", model)
            ]
            assert sorted(r["lr"] for r in search) == [0.001, 0.003, 0.01, 0.03]
            assert [r["seed"] for r in final] == seeds
        ablation = [r for r in rows if (r["dataset"], r["kind"]) == (dataset, "ablation")]
        assert len(ablation) == len(variants) * len(seeds)
    assert all(r["image_size"] == 448 and r["batch_size"] == 8 for r in rows)
    assert {r["epochs"] for r in rows if r["kind"] != "ablation"} == {50}
    assert {r["epochs"] for r in rows if r["name"] == "vit_equal_compute"} == {100}

    # images = epochs x the train images of the split: CUB 5,994 train, search on 80 %;
    # iNat17 579,184, search on 20 %
    cub = [r for r in rows if (r["dataset"], r["name"]) == ("cub", "glsim")]
    assert {r["images"] for r in cub if r["kind"] == "final"} == {50 * 5_994}
    assert {r["images"] for r in cub if r["kind"] == "lrsearch"} == {50 * int(5_994 * 0.8)}
    inat = [r for r in rows if (r["dataset"], r["name"]) == ("inat17", "vit")]
    assert {r["images"] for r in inat if r["kind"] == "lrsearch"} == {50 * int(579_184 * 0.2)}

    # GPU-hours per run = images / the model's images/s at its size and batch
    for r in rows:
        assert r["gpu_hours"] == pytest.approx(r["images"] / rates[r["model"]] / 3600)
    total = plan["summary"]["total"]
    per_model = plan["summary"]["per_model"]
    assert total["runs"] == total["to_run"] == len(rows) and total["done"] == 0
    assert total["gpu_hours"] == pytest.approx(sum(r["gpu_hours"] for r in rows))
    assert total["gpu_hours"] == pytest.approx(sum(e["gpu_hours"] for e in per_model.values()))
    # per main model without ablations: 10 x 4 search runs, 7 x 3 + 3 x 2 seeds
    assert per_model["cal"]["runs"] == 40 + 27

    assert main(["plan", "--params", str(PAPER), "--throughput", str(table)]) == 0
    text = capsys.readouterr().out
    assert f"total: {len(rows)} runs, 0 finished under their run key (skipped)" in text
    assert "GPU-hours" in text and "  glsim: " in text


def test_a_run_finished_under_its_key_is_skipped_and_a_changed_recipe_is_not(tmp_path, capsys):
    params = tiny_params(
        tmp_path, train={"epochs": 1, "batch_size": 6, "warmup_steps": 1},
        protocol={"models": ["vit"], "seeds": [1, 2], "lr_grid": []},
        ablations={"variants": {}, "tables": {}},
    )  # fmt: skip
    p = for_dataset(params, "synthetic_fg")
    prepare(p)
    shard(p)
    before = plan_runs(params)
    assert [r.done for r in before["runs"]] == [False, False]
    assert before["sources"] == {"synthetic_fg": "shards"}
    train = 3 * 6  # classes x train_per_class
    assert [r.images for r in before["runs"]] == [1 * train, 1 * train]

    train_final(p, "vit", 1, track=False)
    after = plan_runs(params)
    assert [(r.seed, r.done) for r in after["runs"]] == [(1, True), (2, False)]
    total = summarise(after, None)["total"]
    assert (total["done"], total["to_run"], total["images"]) == (1, 1, train)

    changed = params.with_overrides({"train.label_smoothing": 0.2})  # a new run key
    assert [r.done for r in plan_runs(changed)["runs"]] == [False, False]


def test_per_dataset_seeds_and_search_share(tmp_path):
    params = tiny_params(
        tmp_path,
        data={"datasets": {"synthetic_fg": {"protocol.seeds": [1], "protocol.search_train_fraction": 0.5}}},
        protocol={"models": ["vit"], "seeds": [1, 2], "lr_grid": [0.01]},
        ablations={"variants": {}, "tables": {}},
    )  # fmt: skip
    p = for_dataset(params, "synthetic_fg")
    assert p.protocol.seeds == [1]
    prepare(p)
    index = shard(p)["lrsearch"]
    assert index["splits"]["train"]["count"] == 3 * 3  # half of each class's 6 train images
    plan = plan_runs(params)
    assert sorted((r.kind, r.seed) for r in plan["runs"]) == [("final", 1), ("lrsearch", 1)]
    assert {r.train_images for r in plan["runs"] if r.kind == "lrsearch"} == {9}

    # a seed of protocol.seeds the dataset leaves out: outputs written, nothing trained
    spec = RunSpec("vit", 2)
    assert skip_unlisted_seed(p, RunSpec("vit", 1)) is None
    reason = skip_unlisted_seed(p, spec)
    assert "seed 2 is not in this dataset's protocol.seeds [1]" in reason
    assert json.loads(spec.curve_path(p).read_text()) == []
    assert "skipped" in json.loads((spec.run_dir(p) / "skipped.json").read_text())
    assert json.loads(spec.report_path(p).read_text())["skipped"] == reason
    assert spec.per_class_path(p).read_text().startswith("class_index,class_name,count")
    assert spec.explain_path(p).stat().st_size > 0
    assert not (spec.run_dir(p) / "last.pt").exists()

    bad = params.with_overrides({"data.datasets": {"synthetic_fg": {"protocol.seeds": [1, 7]}}})
    with pytest.raises(
        ParamsError, match=r"protocol.seeds \[1, 7\] must be a subset of protocol.seeds \[1, 2\]"
    ):
        for_dataset(bad, "synthetic_fg")


def test_train_step_bench_writes_the_table_the_plan_reads(tmp_path, capsys):
    params_file = tmp_path / "params.yaml"
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    tree["model"]["backbone"]["overrides"] = dict(TINY_VIT, depth=1)
    params_file.write_text(yaml.safe_dump(tree))
    out = tmp_path / "cost"
    assert main([
        "cost", "bench", "--train-step", "--params", str(params_file), "--models", "vit", "glsim",
        "--image-size", "32", "--batch-sizes", "4", "--repeats", "1", "--warmup", "1",
        "--min-time", "0.01", "--threads", "1", "--device", "cpu", "--out", str(out),
    ]) == 0  # fmt: skip
    assert "train_step.csv" in capsys.readouterr().out
    table = read_throughput(out / "train_step.csv")
    assert [(r["model"], r["image_size"], r["batch_size"]) for r in table] == [
        ("vit", 32, 4), ("glsim", 32, 4)
    ]  # fmt: skip
    assert all(r["images_per_s"] > 0 for r in table)


def test_a_throughput_table_without_its_columns_is_one_error_line(tmp_path, capsys):
    table = tmp_path / "t.json"
    table.write_text(json.dumps([{"model": "vit", "images_per_s": 3}]))
    assert main(["plan", "--params", str(PAPER), "--throughput", str(table)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --throughput") and "image_size" in err and err.count("\n") == 1


def test_paper_224_is_paper_at_224_px():
    """The two files differ only in the image size, O, Table 13's O variants, the patch-32
    O and the output folders."""
    big, small = (
        yaml.safe_load((ROOT / f).read_text())
        for f in ("configs/paper.yaml", "configs/paper-224.yaml")
    )
    assert small["data"].pop("image_size") == 224 and big["data"].pop("image_size") == 448
    assert small["model"]["glsim"].pop("top_k") == 8 and big["model"]["glsim"].pop("top_k") == 16
    assert small["data"]["datasets"].pop("dogs") == {"model.glsim.top_k": 16}
    assert big["data"]["datasets"].pop("dogs") == {"model.glsim.top_k": 32}
    for tree, folder in ((small, "-224"), (big, "")):
        assert tree["base"].pop("runs_dir") == f"runs{folder}"
        assert tree["base"].pop("reports_dir") == f"reports{folder}"
        for key in ("glsim_o4", "glsim_o8", "glsim_o16", "glsim_o32", "glsim_o64", "glsim_patch32"):
            tree["ablations"]["variants"].pop(key, None)
        tree["ablations"]["tables"].pop("table13")
    assert small == big
    ablations = yaml.safe_load((ROOT / "configs/paper-ablations.yaml").read_text())["ablations"]
    paper = load_params(PAPER).ablations
    assert set(ablations["tables"]) == set(paper.tables)
    renamed = {"glsim_o4", "glsim_o16", "vit_patch16", "glsim_patch16"}  # O and patch at B-16
    assert set(ablations["variants"]) - renamed <= set(paper.variants)


@pytest.mark.slow
@pytest.mark.integration
def test_dvc_lists_every_stage_of_the_paper_protocol(tmp_path):
    """``dvc repro --dry --force`` on configs/paper.yaml as params.yaml (what the file's
    header says to do) lists exactly the stages ``runs.stage_outputs`` gives: seed 100 of
    DAFB, Food and iNat17 included (the stage runs and writes empty outputs)."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    (repo / "params.yaml").write_text(PAPER.read_text())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # --force: a dry run cannot hash the outputs of stages it did not run (data/raw/...)
    out = subprocess.run(
        ["dvc", "repro", "--dry", "--force"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    listed = {
        line.split("'")[1] for line in out.stdout.splitlines() if line.startswith("Running stage")
    }
    expected = set(runs.stage_outputs(load_params(PAPER)))
    assert listed == expected
    assert {"train@dafb-glsim-100", "prepare@inat17", "lr_search@cub-cal"} <= listed
    assert not any(s.startswith("pretrain") for s in listed)


def test_the_plan_is_written_and_logged_to_mlflow(tmp_path, monkeypatch):
    """What the sweep does before it starts: the plan as plan.json / plan.txt in
    ``<runs_dir>/plan/`` and an MLflow run ``plan`` holding both and the totals."""
    from mlflow.tracking import MlflowClient

    from glsim.protocol.plan import write_and_log_plan
    from glsim.tracking.mlflow import tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    params = tiny_params(tmp_path, protocol={"models": ["vit"], "seeds": [1, 2], "lr_grid": [0.01]},
                         ablations={"variants": {}, "tables": {}})  # fmt: skip
    paths = write_and_log_plan(params, source="tiny")
    assert paths["json"] == params.base.runs_dir / "plan" / "plan.json"
    assert json.loads(paths["json"].read_text())["summary"]["total"]["to_run"] == 3
    assert "total: 3 runs" in paths["txt"].read_text()
    client = MlflowClient(tracking_uri(tmp_path))
    (run,) = client.search_runs(
        [client.get_experiment_by_name(params.base.experiment).experiment_id],
        filter_string="tags.mlflow.runName = 'plan'",
    )
    assert run.data.metrics["plan_to_run"] == 3
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "plan")}
    assert logged == {"plan/plan.json", "plan/plan.txt"}


def test_the_aggregate_averages_each_dataset_over_its_own_seeds(tmp_path, monkeypatch):
    """Two datasets, one narrowed to seed 1: the aggregate asks for seed 2 of the other only,
    also when the narrowed one is ``data.dataset`` (the stage resolves from the root tree)."""
    params = tiny_params(
        tmp_path,
        data={"datasets": {"a": {"source": "synthetic_fg", "protocol.seeds": [1]},
                           "b": {"source": "synthetic_fg"}}, "dataset": "a"},
        protocol={"models": ["vit"], "seeds": [1, 2], "lr_grid": []},
        ablations={"variants": {}, "tables": {}},
    )  # fmt: skip
    asked = []

    def report(p, spec):
        asked.append((p.data.dataset, spec.seed))
        return {"dataset": p.data.dataset, "model": spec.model, "seed": spec.seed, "lr": 0.01,
                "top1": 50.0 + spec.seed}  # fmt: skip

    monkeypatch.setattr("glsim.protocol.report.current_report", report)
    aggregate_reports(params, track=False)
    assert asked == [("a", 1), ("b", 1), ("b", 2)]
    results = json.loads(runs.results_paths(params)["json"].read_text())
    assert results["a"]["vit"]["seeds"] == {"1": 51.0}
    assert results["b"]["vit"]["top1_mean"] == 51.5
