"""The localisation curve at a tiny size: snapshots along pretraining, probes of each, the
verdict rule, outputs, MLflow, and that keeping snapshots does not change the training."""

from __future__ import annotations

import csv
import json

import pytest
from safetensors.torch import load_file
from tiny import tiny_params

from glsim import runs
from glsim.eval import curve
from glsim.eval.localisation import probe_data
from glsim.protocol.curve import localisation_curve, pretrain_seed, probe_rows, probed_epochs
from glsim.protocol.data import prepare, shard
from glsim.train.pretrain import pretrain_backbone, snapshot_path


@pytest.fixture
def sharded(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    params = tiny_params(
        tmp_path, curve={"seeds": [0, 1], "epochs": 3, "every": 2, "tasks": ["colour"]}
    )
    prepare(params)
    shard(params)
    return params


def test_snapshots_do_not_change_pretraining_and_resume(sharded, tmp_path):
    params = sharded.model_copy(deep=True)
    params.pretrain.epochs = 2
    plain = pretrain_backbone(params, work_dir=tmp_path / "plain")
    params.pretrain.output = tmp_path / "snap.safetensors"
    snaps = tmp_path / "snaps"
    snapped = pretrain_backbone(
        params, work_dir=tmp_path / "snapped", snapshot_dir=snaps, snapshot_info=True
    )
    assert snapped["upstream_test_acc"] == plain["upstream_test_acc"]
    a, b = load_file(str(sharded.pretrain.output)), load_file(str(params.pretrain.output))
    assert all((a[k] == b[k]).all() for k in a)  # bitwise the same weights
    last = load_file(str(snapshot_path(snaps, 2)))
    assert all((last[k] == b[k]).all() for k in b)  # the last snapshot is the final weights
    first = load_file(str(snapshot_path(snaps, 0)))
    assert any((first[k] != b[k]).any() for k in b)  # epoch 0: before any step
    info = json.loads(snapshot_path(snaps, 2).with_suffix(".json").read_text())
    assert info["step"] == 2 * (params.pretrain.images_per_epoch // params.pretrain.batch_size)
    assert info["upstream_test_acc"] == plain["upstream_test_acc"]


def test_curve_end_to_end(sharded):
    params = sharded
    verdict = localisation_curve(params)
    assert probed_epochs(params, "colour") == [0, 2, 3]
    paths = runs.localisation_curve_paths(params)
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    # 2 seeds x 3 snapshots x 4 selectors x 4 measures
    assert len(rows) == 2 * 3 * 4 * 4
    assert {r["seed"] for r in rows} == {"0", "1"} and {r["task"] for r in rows} == {"colour"}
    summary = json.loads(paths["json"].read_text())["tasks"]["colour"]
    assert set(summary["verdicts"]) == set(curve.SELECTORS) == set(verdict["colour"])
    assert len(summary["summary"]) == 3 * 4 * 4
    assert "| epoch | step |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    # the seeds pretrain differently: their upstream accuracies or probes differ somewhere
    by_seed = {s: [r["value"] for r in rows if r["seed"] == s] for s in ("0", "1")}
    assert by_seed["0"] != by_seed["1"]
    # keyed: a second call trains nothing and writes the same rows
    before = paths["csv"].read_text()
    localisation_curve(params, track=False)
    assert paths["csv"].read_text() == before

    import mlflow

    found = mlflow.search_runs(
        experiment_names=[params.base.experiment],
        filter_string="tags.stage = 'localisation_curve'",
    )
    assert len(found) == 1 and "metrics.colour_gls_iou" in found.columns  # the tracker: / as _


def test_curve_of_two_tasks_side_by_side(sharded, tmp_path):
    # the supervised task's rows are those of a curve of that task alone; self-distillation's
    # sit beside them in the csv, the json, the markdown and the plot
    params = sharded.model_copy(deep=True)
    params.curve.seeds, params.curve.epochs, params.curve.every = [0], 2, 2
    params.pretrain.self_distillation.local_size = 16
    params.pretrain.self_distillation.out_dim = 64
    alone = curve.write_outputs(
        params, probe_rows(params, "colour", 0, pretrain_seed(params, 0, "colour"),
                                 probe_data(params)),
    )  # fmt: skip
    params.curve.tasks = ["colour", "self_distillation"]
    verdict = localisation_curve(params, track=False)
    assert list(verdict) == ["colour", "self_distillation"]
    paths = runs.localisation_curve_paths(params)
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["colour"] * 2 * 16 + ["self_distillation"] * 2 * 16
    summary = json.loads(paths["json"].read_text())["tasks"]
    assert summary["colour"]["summary"] == json.loads(json.dumps(alone["summary"]["colour"]))
    assert summary["colour"]["verdicts"] == verdict["colour"]
    distil = [r for r in rows if r["task"] == "self_distillation"]
    assert [r["value"] for r in distil] != [r["value"] for r in rows if r["task"] == "colour"]
    md = paths["md"].read_text()
    assert "upstream task `colour`" in md and "upstream task `self_distillation`" in md
    assert "20-NN on the CLS feature" in md
    pretrained = json.loads(
        (runs.localisation_curve_dir(params, 0, "self_distillation") / "pretrain.json").read_text()
    )
    assert pretrained["task"] == "self_distillation"


def test_verdict_needs_bands_apart_on_both_measures():
    def rows(iou_gls, pointing_gls, control):
        out = []
        for seed, (i, p) in enumerate(zip(iou_gls, pointing_gls, strict=True)):
            for measure, v in (("iou", i), ("pointing", p)):
                out.append({
                    "seed": seed, "epoch": 1, "step": 10, "upstream_acc": 50.0, "selector": "gls",
                    "measure": measure, "value": v, "zoom": 1.5,
                    **{c: control[measure][seed] for c in curve.CONTROLS},
                })  # fmt: skip
        return out

    control = {"iou": [0.10, 0.11, 0.12], "pointing": [10.0, 11.0, 12.0]}
    apart = curve.summarise(rows([0.20, 0.21, 0.22], [30.0, 31.0, 32.0], control))
    assert all(i["beats_all_controls"] for i in apart)
    assert curve.verdicts(apart)["gls"]["localises_from_epoch"] == 1
    # IoU apart, pointing game overlapping (mean 12 +- 2 against 11 +- 1): not localising
    overlap = curve.summarise(rows([0.20, 0.21, 0.22], [10.0, 12.0, 14.0], control))
    assert curve.verdicts(overlap)["gls"]["localises_from_epoch"] is None


def test_curve_refuses_a_dataset_without_object_boxes_before_pretraining(tmp_path):
    # a user's own folder of 200 classes carries no object boxes: the curve says so in one
    # line before it pretrains anything, not after every seed's pretraining
    from tiny import imagefolder_params

    from glsim.errors import RunError

    params = imagefolder_params(tmp_path, classes=200, curve={"seeds": [0], "epochs": 1})
    with pytest.raises(RunError, match="carries no object boxes"):
        localisation_curve(params, track=False)
    assert not runs.localisation_curve_dir(params, 0).exists()
