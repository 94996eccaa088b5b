"""The stage chain end to end at a tiny size, through the protocol functions the DVC stages
and the flows call: prepare -> shard -> validate -> pretrain -> probe -> LR search -> train
-> evaluate -> ablation -> aggregate."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from tiny import tiny_params

from glsim import runs
from glsim.data.lrsearch import LR_SEARCH_DIR
from glsim.data.shards import read_index
from glsim.numerics import active_profile, host_record
from glsim.protocol.data import prepare, shard
from glsim.protocol.done import is_done, pretrain_done
from glsim.protocol.evaluate import evaluate_run
from glsim.protocol.lr_search import search_lr
from glsim.protocol.pretrain import pretrain
from glsim.protocol.probe import probe
from glsim.protocol.report import aggregate_reports
from glsim.protocol.specs import chosen_lr
from glsim.protocol.train import run_variant
from glsim.protocol.validate import validate
from glsim.runs import RunSpec
from glsim.train.checkpoint import weights_digest
from glsim.train.pretrain import pretrain_backbone
from glsim.train.run import load_run, train_run


@pytest.fixture
def chain(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # a server-less store puts artifacts in ./mlruns
    params = tiny_params(tmp_path, data={"shard_max_count": 8, "shard_max_bytes": 1 << 20})
    prepare(params)
    shard(params)
    assert validate(params).success and runs.validation_report(params).is_file()
    report = pretrain(params)
    assert 0 <= report["upstream_test_acc"] <= 100 and pretrain_done(params)
    params.model.backbone.weights = params.pretrain.output
    return params


def test_lr_search_shards_split_train_per_class(chain):
    index = read_index(chain.data.shards_dir / chain.data.dataset / LR_SEARCH_DIR)
    # 6 train images per class: int(6 * 0.8) = 4 train, 2 val ("test") per class, 3 classes
    assert index["splits"]["train"]["count"] == 12 and index["splits"]["test"]["count"] == 6


@pytest.mark.integration
def test_protocol_end_to_end(chain, tmp_path):
    params = chain
    probed = probe(params)
    assert runs.probe_explain(params).stat().st_size > 0  # the backbone's GLS grid
    assert json.loads(runs.probe_report(params).read_text()) == json.loads(json.dumps(probed))
    for model in ("vit", "glsim"):
        search = search_lr(params, model)
        assert set(search["val_top1"]) == {"0.03", "0.01"} and search["chosen_lr"] in (0.03, 0.01)
        best = max(search["val_top1"].values())
        assert search["val_top1"][f"{search['chosen_lr']:g}"] == best
        lr = chosen_lr(params, model)
        run_dir = train_run(params, RunSpec(model=model, seed=1, lr=lr))
        assert (run_dir / "last.pt").is_file() and (run_dir / "params.resolved.yaml").is_file()
        history = json.loads((run_dir / "train.json").read_text())["history"]
        assert len(history) == params.train.epochs
        spec = RunSpec(model=model, seed=1, lr=lr)
        curve = json.loads(spec.curve_path(params).read_text())
        assert curve == [
            {"epoch": i + 1, "loss": h["train/loss"], "acc": h["train/acc"]}
            for i, h in enumerate(history)
        ]
        report = evaluate_run(params, spec)
        assert report["count"] == 9 and 0 <= report["top1"] <= 100 and report["lr"] == lr
        assert "per_class" not in report  # a table, beside the report
        table = pd.read_csv(spec.per_class_path(params))
        assert table["count"].tolist() == [3, 3, 3] and table["correct"].sum() == round(
            report["top1"] * 9 / 100
        )
        assert report["run_key"] == runs.run_key(params, spec) and is_done(params, spec)
        # the report carries the run's record: the digest of the weights it evaluated
        final = torch.load(run_dir / "last.pt", weights_only=False)["model"]
        assert report["weights_sha256"] == weights_digest(final)
        assert report["numerics"] == active_profile() and report["host"] == host_record()
        grid = spec.explain_path(params)  # glsim explain on the first test images
        from PIL import Image

        with Image.open(grid) as picture:
            assert picture.format == "PNG" and picture.height > 2 * picture.width / 4
        loc = report["localisation"]  # the built-in set has object boxes
        assert 0 <= loc["hit_rate"] <= 100 and 0 <= loc["hit_rate_shuffled"] <= 100
    ablation = run_variant(params, "glsim_no_aggregator", 1)
    assert ablation["model"] == "glsim_no_aggregator" and ablation["kind"] == "ablation"

    paths = aggregate_reports(params)
    results = json.loads(paths[0].read_text())
    bars = json.loads(runs.results_paths(params)["plot"].read_text())
    assert {b["run"]: b["top1_mean"] for b in bars} == {
        f"synthetic_fg/{m}": results["synthetic_fg"][m]["top1_mean"] for m in ("vit", "glsim")
    }
    assert len(json.loads(runs.lr_plot(params, "glsim").read_text())) == 2
    entry = results["synthetic_fg"]["glsim"]
    assert set(entry) == {"top1_mean", "top1_std", "seeds", "lr"} and entry["seeds"].keys() == {"1"}
    assert "glsim_no_aggregator" in results["synthetic_fg"]["ablations"]
    md = paths[1].read_text()
    assert "Table 5 (synthetic_fg)" in md and "no aggregator" in md and "LR search" in md
    assert "\\textbf" in paths[2].read_text()
    # the ledger: each published number with its seeds' digests and what made them
    ledger = json.loads(runs.ledger_paths(params)["json"].read_text())
    row = next(r for r in ledger["rows"] if r["model"] == "glsim")
    assert (row["top1_mean"], row["paper"]) == (entry["top1_mean"], None)
    (run,) = row["runs"]
    assert run["weights_sha256"] == report["weights_sha256"] and run["host"] == host_record()
    assert run["command"] == "dvc repro evaluate@synthetic_fg-glsim-1"
    pretrained = json.loads(runs.pretrain_report(params).read_text())
    assert ledger["pretrain"]["weights_sha256"] == pretrained["weights_sha256"]
    assert "dvc repro evaluate@synthetic_fg-glsim-1" in runs.ledger_paths(params)["md"].read_text()

    import mlflow

    tracked = mlflow.search_runs(experiment_names=[params.base.experiment])
    names = set(tracked["tags.mlflow.runName"])
    assert {"synthetic_fg/vit/seed1", "synthetic_fg/glsim/seed1", "aggregate"} <= names
    assert "synthetic_fg/lrsearch/glsim/lr0.03/seed1" in names
    assert "synthetic_fg/ablation/glsim_no_aggregator/seed1" in names
    glsim_run = tracked[tracked["tags.mlflow.runName"] == "synthetic_fg/glsim/seed1"].iloc[0]
    assert glsim_run["metrics.test_top1"] == pytest.approx(report["top1"])
    assert glsim_run["params.train.epochs"] == str(params.train.epochs)
    # MLflow has the same curves: train/loss and train/acc (logged as train_*) per epoch
    client = mlflow.MlflowClient()
    logged = client.get_metric_history(glsim_run["run_id"], "train_loss")
    assert [m.value for m in logged] == [row["loss"] for row in curve]
    assert len(client.get_metric_history(glsim_run["run_id"], "train_acc")) == len(curve)
    artifacts = {a.path for a in client.list_artifacts(glsim_run["run_id"], "eval")}
    assert "eval/seed1_per_class.csv" in artifacts
    aggregate_run = tracked[tracked["tags.mlflow.runName"] == "aggregate"].iloc[0]
    logged = mlflow.artifacts.load_dict(f"runs:/{aggregate_run['run_id']}/tables/ledger_table.json")
    commands = [row[logged["columns"].index("command")] for row in logged["data"]]
    assert "dvc repro evaluate@synthetic_fg-glsim-1" in commands  # an MLflow table

    # the logged model carries a signature (images in, logits out) and an input example
    # that MLflow's pyfunc runs to the run's own logits
    info = mlflow.models.get_model_info(f"runs:/{glsim_run['run_id']}/model")
    size = params.data.image_size
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, size, size)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3)  # 3 classes
    example = mlflow.models.Model.load(info.model_uri).load_input_example(
        mlflow.artifacts.download_artifacts(info.model_uri)
    )
    assert example.shape == (1, 3, size, size)
    served = mlflow.pyfunc.load_model(info.model_uri).predict(example)
    model, _ = load_run(params, RunSpec(model="glsim", seed=1, lr=chosen_lr(params, "glsim")))
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(example)).numpy()
    assert abs(served - expected).max() < 1e-5


@pytest.mark.integration
def test_finished_run_is_not_repeated_and_killed_run_resumes_identically(chain, tmp_path):
    params = chain
    params.train.epochs = 3

    def at(runs_dir):
        return params.model_copy(
            update={"base": params.base.model_copy(update={"runs_dir": tmp_path / runs_dir})}
        )

    whole = train_run(at("a"), RunSpec("glsim", 1, lr=0.01), track=False)
    stamp = (whole / "last.pt").stat().st_mtime_ns
    curve = RunSpec("glsim", 1, lr=0.01).curve_path(at("a"))
    written = curve.read_text()
    curve.unlink()  # e.g. a dvc.yaml that newly declares it
    assert train_run(at("a"), RunSpec("glsim", 1, lr=0.01), track=False) == whole
    assert (whole / "last.pt").stat().st_mtime_ns == stamp  # finished: not trained again
    assert curve.read_text() == written  # but its curve is written again

    killed = train_run(at("b"), RunSpec("glsim", 1, lr=0.01), track=False, stop_after_epochs=1)
    assert json.loads((killed / "train.json").read_text())["epochs_done"] == 1
    resumed = train_run(at("b"), RunSpec("glsim", 1, lr=0.01), track=False)
    h_whole = json.loads((whole / "train.json").read_text())["history"]
    h_resumed = json.loads((resumed / "train.json").read_text())["history"]
    assert [h["train/loss"] for h in h_whole] == [h["train/loss"] for h in h_resumed]
    a = torch.load(whole / "last.pt", weights_only=False)["model"]
    b = torch.load(resumed / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # each run records what it produced and what those bits depend on, outside its key
    records = [json.loads((d / "train.json").read_text()) for d in (whole, resumed)]
    key = runs.run_key(at("a"), RunSpec("glsim", 1, lr=0.01))
    assert records[0]["run_key"] == records[1]["run_key"] == key
    assert records[0]["weights_sha256"] == records[1]["weights_sha256"] == weights_digest(a)
    assert all(r["numerics"] == active_profile() and r["host"] == host_record() for r in records)

    # another LR is another configuration: the old checkpoint is moved aside, not resumed
    train_run(at("a"), RunSpec("glsim", 1, lr=0.03), track=False)
    assert (whole / "last.pt.stale").is_file()


def test_pretraining_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    params = tiny_params(tmp_path)
    weights, reports = [], []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        p = params.model_copy(
            update={"pretrain": params.pretrain.model_copy(update={"output": out})}
        )
        torch.manual_seed(hash(name) % 1000)  # whatever ran before must not matter
        reports.append(pretrain_backbone(p, work_dir=tmp_path / f"work_{name}"))
        weights.append(load_file(str(out)))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # the report names the weights file's tensors by digest, and where they were made
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"]
    assert reports[0]["weights_sha256"] == weights_digest(weights[0])
    assert reports[0]["numerics"] == active_profile() and reports[0]["host"] == host_record()
