"""The protocol layer: LR selection (whole, and in the parts the flows call) and variant
resolution with training and evaluation stubbed out; what makes a run "done" (its run key
in checkpoint and report); the data and pretraining stage bodies at a tiny size."""

from __future__ import annotations

import json
import os

import pytest
import torch
from tiny import tiny_params

from glsim import runs
from glsim.config import ParamsError
from glsim.data.shards import INDEX_FORMAT, INDEX_NAME, ShardError, read_index
from glsim.errors import RunError
from glsim.models.registry import UnknownModel
from glsim.protocol.data import prepare, shard, shard_workers
from glsim.protocol.done import is_done, pretrain_done
from glsim.protocol.lr_search import check_search, record_lr_choice, search_lr
from glsim.protocol.pretrain import pretrain
from glsim.protocol.specs import (
    chosen_lr,
    search_params,
    search_spec,
    search_val_top1,
    variant_params,
)
from glsim.runs import RunSpec
from glsim.utils import atomic_write_json


@pytest.fixture
def fake_runs(monkeypatch):
    """train_run/evaluate_run stubs: val top-1 by LR from a table; records what ran."""
    table: dict[float, float] = {}
    calls: list[RunSpec] = []

    def train_run(params, spec, track=True):
        calls.append(spec)
        return spec.run_dir(params)

    def evaluate_run(params, spec, track=True):
        assert params.train.epochs == (params.protocol.search_epochs or params.train.epochs)
        return {"top1": table[spec.lr]}

    monkeypatch.setattr("glsim.protocol.lr_search.train_run", train_run)
    monkeypatch.setattr("glsim.protocol.lr_search.evaluate_run", evaluate_run)
    return table, calls


def test_search_picks_best_val_lr_and_records_it(tmp_path, fake_runs):
    table, calls = fake_runs
    params = tiny_params(tmp_path, protocol={"lr_grid": [0.03, 0.01, 0.003], "search_epochs": 1})
    table.update({0.03: 50.0, 0.01: 71.5, 0.003: 70.0})
    report = search_lr(params, "glsim")
    assert report["chosen_lr"] == 0.01 and report["val_top1"] == {
        "0.03": 50.0,
        "0.01": 71.5,
        "0.003": 70.0,
    }
    assert [(c.kind, c.lr, c.seed) for c in calls] == [
        ("lrsearch", lr, 1) for lr in (0.03, 0.01, 0.003)
    ]
    saved = json.loads(runs.lr_report(params, "glsim").read_text())
    assert saved["chosen_lr"] == 0.01 and saved["epochs"] == 1
    assert chosen_lr(params, "glsim") == 0.01


def test_ties_go_to_the_earlier_lr_in_the_grid(tmp_path, fake_runs):
    table, _ = fake_runs
    params = tiny_params(tmp_path, protocol={"lr_grid": [0.003, 0.03, 0.01]})
    table.update({0.003: 60.0, 0.03: 70.0, 0.01: 70.0})
    assert search_lr(params, "vit")["chosen_lr"] == 0.03


def test_empty_grid_uses_train_lr_without_training(tmp_path, fake_runs):
    _, calls = fake_runs
    params = tiny_params(tmp_path, protocol={"lr_grid": []}, train={"lr": 0.02})
    assert search_lr(params, "vit")["chosen_lr"] == 0.02 and not calls
    assert chosen_lr(params, "vit") == 0.02


def test_chosen_lr_refuses_a_report_from_another_grid(tmp_path, fake_runs):
    table, _ = fake_runs
    params = tiny_params(tmp_path, protocol={"lr_grid": [0.03, 0.01]})
    table.update({0.03: 1.0, 0.01: 2.0})
    search_lr(params, "vit")
    changed = tiny_params(tmp_path, protocol={"lr_grid": [0.1, 0.01]})
    with pytest.raises(RunError, match="rerun the lr_search stage"):
        chosen_lr(changed, "vit")
    with pytest.raises(RunError, match="lr_search stage for 'glsim'"):
        chosen_lr(params, "glsim")
    with pytest.raises(UnknownModel, match="unknown model 'vitt'; did you mean 'vit'"):
        chosen_lr(params, "vitt")


def test_variant_params_apply_overrides_and_unknown_names_fail(tmp_path):
    params = tiny_params(tmp_path)
    v = variant_params(params, "glsim_no_aggregator")
    assert v.model.glsim.aggregator is False and params.model.glsim.aggregator is True
    with pytest.raises(ParamsError, match="unknown ablation variant 'nope'"):
        variant_params(params, "nope")


def test_variant_with_a_bad_override_names_it(tmp_path):
    params = tiny_params(
        tmp_path,
        ablations={
            "variants": {"bad": {"model": "glsim", "set": {"model.glsim.topk": 4}}},
            "tables": {},
        },
    )
    with pytest.raises(
        ParamsError, match=r"(?s)ablations\.variants\.bad\.set.*model\.glsim\.topk.*top_k"
    ):
        variant_params(params, "bad")


def test_run_dirs_and_labels_key_every_kind(tmp_path):
    params = tiny_params(tmp_path)
    final = RunSpec("glsim", 10, lr=0.01)
    search = RunSpec("glsim", 1, lr=0.03, kind="lrsearch")
    ablation = RunSpec("glsim", 10, lr=0.01, kind="ablation", variant="glsim_no_aggregator")
    dirs = {final.run_dir(params), search.run_dir(params), ablation.run_dir(params)}
    assert len(dirs) == 3
    assert search.label(params) == "synthetic_fg/lrsearch/glsim/lr0.03/seed1"
    assert ablation.label(params) == "synthetic_fg/ablation/glsim_no_aggregator/seed10"
    assert final.label(params) == "synthetic_fg/glsim/seed10"


def test_empty_grid_still_creates_the_stage_output_folder(tmp_path, fake_runs):
    params = tiny_params(tmp_path, protocol={"lr_grid": []})
    search_lr(params, "glsim")
    assert (params.base.runs_dir / "synthetic_fg/lrsearch/glsim/search.json").is_file()


# ---------------------------------------------------------------------------------------
# the LR search's parts (the flows train each LR as a run of its own)


def test_record_lr_choice_writes_what_search_lr_writes(tmp_path, fake_runs):
    table, _ = fake_runs
    params = tiny_params(tmp_path, protocol={"lr_grid": [0.03, 0.01, 0.003], "search_epochs": 1})
    table.update({0.03: 50.0, 0.01: 71.5, 0.003: 71.5})
    whole = search_lr(params, "glsim")
    files = [runs.lr_search_dir(params, "glsim") / "search.json", runs.lr_report(params, "glsim")]
    written = [f.read_bytes() for f in files]
    for f in files:
        f.unlink()
    # any order, extra keys ignored: the report follows the grid
    val = {"0.003": 71.5, "0.1": 99.0, "0.01": 71.5, "0.03": 50.0}
    parts = record_lr_choice(params, "glsim", val)
    assert parts == whole and list(parts["val_top1"]) == ["0.03", "0.01", "0.003"]
    assert [f.read_bytes() for f in files] == written
    assert parts["chosen_lr"] == 0.01 and parts["epochs"] == 1 and parts["seed"] == 1
    # what dvc plots draws: one row per LR of the grid
    assert json.loads(runs.lr_plot(params, "glsim").read_text()) == [
        {"lr": 0.03, "val_top1": 50.0}, {"lr": 0.01, "val_top1": 71.5},
        {"lr": 0.003, "val_top1": 71.5},
    ]  # fmt: skip


def test_record_lr_choice_needs_every_lr_of_the_grid(tmp_path):
    params = tiny_params(tmp_path, protocol={"lr_grid": [0.03, 0.01]})
    with pytest.raises(RunError, match=r"no val top-1 for lr 0\.01"):
        record_lr_choice(params, "vit", {"0.03": 1.0})
    assert not runs.lr_report(params, "vit").exists()


def test_record_lr_choice_with_an_empty_grid_records_train_lr(tmp_path, fake_runs):
    params = tiny_params(tmp_path, protocol={"lr_grid": []}, train={"lr": 0.02})
    report = record_lr_choice(params, "vit", {})
    assert report == search_lr(params, "vit")
    assert report["chosen_lr"] == 0.02 and report["searched"] is False and not fake_runs[1]
    assert (runs.lr_search_dir(params, "vit") / "search.json").is_file()


def test_search_params_and_spec(tmp_path):
    params = tiny_params(tmp_path, protocol={"search_epochs": 1, "search_seed": 7})
    assert search_params(params).train.epochs == 1 and params.train.epochs == 2
    unset = tiny_params(tmp_path, protocol={"search_epochs": None})
    assert search_params(unset).train.epochs == unset.train.epochs
    spec = search_spec(params, "vit", 0.03)
    assert spec == RunSpec(model="vit", seed=7, lr=0.03, kind="lrsearch")


def test_an_empty_val_part_stops_the_search_before_training(tmp_path, fake_runs):
    params = tiny_params(tmp_path)
    search = runs.shards_dir(params, "lrsearch")
    atomic_write_json(
        search / INDEX_NAME,
        {"format": INDEX_FORMAT, "splits": {"train": {"count": 3}, "test": {"count": 0}}},
    )
    for check in (check_search, search_lr):
        with pytest.raises(ShardError, match=r"val part is empty.*protocol\.lr_grid: \[\]"):
            check(params, "vit")
    assert not fake_runs[1]
    check_search(
        tiny_params(tmp_path, protocol={"lr_grid": []}), "vit"
    )  # nothing to search
    with pytest.raises(UnknownModel):
        check_search(params, "vitt")


def test_search_val_top1_reads_reports_of_the_current_runs_only(tmp_path):
    params = tiny_params(tmp_path, protocol={"lr_grid": [0.03, 0.01]})
    sp = search_params(params)
    for lr, top1 in ((0.03, 40.0), (0.01, 60.0)):
        spec = search_spec(params, "vit", lr)
        atomic_write_json(spec.report_path(sp), {"top1": top1, "run_key": runs.run_key(sp, spec)})
    assert search_val_top1(params, "vit") == {"0.03": 40.0, "0.01": 60.0}
    changed = params.with_overrides({"train.weight_decay": 0.1})  # another configuration
    with pytest.raises(RunError, match=r"lr 0\.03 has not been trained and evaluated"):
        search_val_top1(changed, "vit")


# ---------------------------------------------------------------------------------------
# done: checkpoint and report under the current run key


def _fake_run(params, spec, *, epoch, ckpt_key, report_key):
    """A checkpoint at ``epoch`` under ``ckpt_key`` and a report under ``report_key``
    (None: a report without a key, as written before reports carried one)."""
    run_dir = spec.run_dir(params)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state": {"epoch": epoch}, "extra": {"run_key": ckpt_key}}, run_dir / "last.pt")
    report = {"top1": 50.0} if report_key is None else {"top1": 50.0, "run_key": report_key}
    atomic_write_json(spec.report_path(params), report)


def test_is_done_needs_the_run_key_in_checkpoint_and_report(tmp_path):
    params = tiny_params(tmp_path)
    spec = RunSpec("glsim", 1, lr=0.01)
    key = runs.run_key(params, spec)
    assert not is_done(params, spec)  # nothing there
    _fake_run(params, spec, epoch=params.train.epochs, ckpt_key=key, report_key=key)
    assert is_done(params, spec)
    # the report's age does not matter, its key does
    ckpt = spec.run_dir(params) / "last.pt"
    report = spec.report_path(params)
    ckpt.touch()
    os.utime(report, (0, 0))
    assert is_done(params, spec)
    for ckpt_key, report_key, epoch in (
        (key, None, params.train.epochs),  # evaluated before reports carried the key
        (key, "another", params.train.epochs),  # evaluated under another configuration
        ("another", key, params.train.epochs),  # checkpoint of another configuration
        (key, key, params.train.epochs - 1),  # killed before the last epoch
    ):
        _fake_run(params, spec, epoch=epoch, ckpt_key=ckpt_key, report_key=report_key)
        assert not is_done(params, spec), (ckpt_key, report_key, epoch)
    _fake_run(params, spec, epoch=params.train.epochs, ckpt_key=key, report_key=key)
    assert not is_done(params.with_overrides({"train.lr": 0.5}), spec)  # recipe changed


# ---------------------------------------------------------------------------------------
# stage bodies (what pipelines/*.py and flows/ call)


def test_prepare_and_shard_write_where_runs_says(tmp_path):
    params = tiny_params(tmp_path)
    assert prepare(params) == runs.manifest_path(params)
    index = shard(params)
    assert index["final"] == read_index(runs.shards_dir(params))
    assert index["lrsearch"] == read_index(runs.shards_dir(params, "lrsearch"))
    counts = {k: {s: e["count"] for s, e in i["splits"].items()} for k, i in index.items()}
    # 3 classes x (6 train, 3 test); the search split: 4 train, 2 val ("test") per class
    assert counts == {"final": {"train": 18, "test": 9}, "lrsearch": {"train": 12, "test": 6}}


@pytest.mark.parametrize("cores, workers", [(None, 1), (1, 1), (3, 3), (64, 4)])
def test_shards_are_written_by_up_to_four_processes(monkeypatch, cores, workers):
    from glsim.data import stage

    monkeypatch.setattr(stage.os, "cpu_count", lambda: cores)
    assert shard_workers() == workers


def test_pretraining_is_keyed_by_its_configuration(tmp_path, capsys):
    from safetensors.torch import load_file

    params = tiny_params(tmp_path)
    ckpt = runs.pretrain_dir(params) / "last.pt"
    assert not pretrain_done(params)
    report = pretrain(params)
    assert report["run_key"] == runs.pretrain_key(params)
    assert json.loads(runs.pretrain_report(params).read_text()) == report
    assert (runs.pretrain_dir(params) / "params.resolved.yaml").is_file()
    assert pretrain_done(params)
    first = load_file(str(params.pretrain.output))

    # the same configuration (stages do not change the weights): not trained again
    stamp = ckpt.stat().st_mtime_ns
    same = params.with_overrides({"pretrain.stages": []})
    assert pretrain_done(same)
    assert pretrain(same) == report and ckpt.stat().st_mtime_ns == stamp

    # another configuration: not done, and the finished checkpoint is not resumed
    changed = params.with_overrides({"pretrain.lr": 3e-3})
    assert not pretrain_done(changed)
    capsys.readouterr()
    again = pretrain(changed)
    assert "belongs to another configuration" in capsys.readouterr().out
    assert (runs.pretrain_dir(params) / "last.pt.stale").is_file()
    assert again["run_key"] != report["run_key"] and pretrain_done(changed)
    assert not pretrain_done(params)
    second = load_file(str(params.pretrain.output))
    assert any(not torch.equal(first[k], second[k]) for k in first)
