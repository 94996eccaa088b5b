"""LR selection and variant resolution, with training and evaluation stubbed out."""

from __future__ import annotations

import json

import pytest
from tiny import tiny_params

from glsim import protocol, runs
from glsim.config import ParamsError
from glsim.errors import RunError
from glsim.models.registry import UnknownModel
from glsim.runs import RunSpec


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

    monkeypatch.setattr(protocol, "train_run", train_run)
    monkeypatch.setattr(protocol, "evaluate_run", evaluate_run)
    return table, calls


def test_search_picks_best_val_lr_and_records_it(tmp_path, fake_runs):
    table, calls = fake_runs
    params = tiny_params(tmp_path, protocol={"lr_grid": [0.03, 0.01, 0.003], "search_epochs": 1})
    table.update({0.03: 50.0, 0.01: 71.5, 0.003: 70.0})
    report = protocol.search_lr(params, "glsim")
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
    assert protocol.chosen_lr(params, "glsim") == 0.01


def test_ties_go_to_the_earlier_lr_in_the_grid(tmp_path, fake_runs):
    table, _ = fake_runs
    params = tiny_params(tmp_path, protocol={"lr_grid": [0.003, 0.03, 0.01]})
    table.update({0.003: 60.0, 0.03: 70.0, 0.01: 70.0})
    assert protocol.search_lr(params, "vit")["chosen_lr"] == 0.03


def test_empty_grid_uses_train_lr_without_training(tmp_path, fake_runs):
    _, calls = fake_runs
    params = tiny_params(tmp_path, protocol={"lr_grid": []}, train={"lr": 0.02})
    assert protocol.search_lr(params, "vit")["chosen_lr"] == 0.02 and not calls
    assert protocol.chosen_lr(params, "vit") == 0.02


def test_chosen_lr_refuses_a_report_from_another_grid(tmp_path, fake_runs):
    table, _ = fake_runs
    params = tiny_params(tmp_path, protocol={"lr_grid": [0.03, 0.01]})
    table.update({0.03: 1.0, 0.01: 2.0})
    protocol.search_lr(params, "vit")
    changed = tiny_params(tmp_path, protocol={"lr_grid": [0.1, 0.01]})
    with pytest.raises(RunError, match="rerun the lr_search stage"):
        protocol.chosen_lr(changed, "vit")
    with pytest.raises(RunError, match="lr_search stage for 'glsim'"):
        protocol.chosen_lr(params, "glsim")
    with pytest.raises(UnknownModel, match="unknown model 'vitt'; did you mean 'vit'"):
        protocol.chosen_lr(params, "vitt")


def test_variant_params_apply_overrides_and_unknown_names_fail(tmp_path):
    params = tiny_params(tmp_path)
    v = protocol.variant_params(params, "glsim_no_aggregator")
    assert v.model.glsim.aggregator is False and params.model.glsim.aggregator is True
    with pytest.raises(ParamsError, match="unknown ablation variant 'nope'"):
        protocol.variant_params(params, "nope")


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
        protocol.variant_params(params, "bad")


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
    protocol.search_lr(params, "glsim")
    assert (params.base.runs_dir / "synthetic_fg/lrsearch/glsim/search.json").is_file()
