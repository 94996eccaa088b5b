"""The sweep the schedule starts, run three times around a user's data change (Prefect's
test server, training in this process): the first trains everything; after four images
move to another class folder (same source string) the second retrains exactly that
dataset's runs, registers what they made and compares it with the champion only if both
were measured on the same data; the third, with nothing changed, trains nothing and adds
no MLflow run at all."""

from __future__ import annotations

import pytest
import yaml
from tiny import tiny_params, write_imagefolder

from flows.sweep import sweep


def _two_datasets(tmp_path):
    """The built-in set and a user's image folder, one seed, a two-LR search, no
    ablations, a random backbone (no pretraining): the smallest sweep with two datasets."""
    source = write_imagefolder(tmp_path / "src", classes=3, train=4, test=2)
    tree = tiny_params(tmp_path).model_dump(mode="json")
    tree["data"]["datasets"] = {"synthetic_fg": {"source": "synthetic_fg"},
                                "mine": {"source": f"imagefolder:{source}"}}  # fmt: skip
    tree["protocol"].update({"models": ["vit"], "seeds": [1], "lr_grid": [0.03, 0.01]})
    tree["ablations"] = {"variants": {}, "tables": {}}
    tree["pretrain"]["stages"] = []
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path, source


def _train_runs(experiment: str, query: str = "tags.stage = 'train'") -> dict[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], query, max_results=1000)
    return {r.info.run_id: r.info.run_name for r in found}


@pytest.mark.slow
def test_a_sweep_after_a_data_change_retrains_that_dataset_only(prefect_harness, tmp_path, monkeypatch):
    from glsim.tracking.registry import describe_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    path, source = _two_datasets(tmp_path)
    experiment = yaml.safe_load(path.read_text())["base"]["experiment"]

    first = sweep(params_file=str(path), use_deployments=False)
    assert len(first["trained"]) == 6 and first["skipped"] == []  # 2 x (2 LRs + 1 seed)
    assert {d["alias"] for d in first["registry"].values()} == {"champion"}
    before = _train_runs(experiment)
    mine_v1 = first["registry"]["mine/vit"]["version"]

    train = source / "train"
    for i in range(3):  # a user moves mislabelled images to the class they belong to
        (train / "species_000" / f"{i}.png").rename(train / "species_001" / f"moved{i}.png")
    (train / "species_002" / "0.png").rename(train / "species_001" / "moved3.png")

    second = sweep(params_file=str(path), use_deployments=False)
    assert second["trained"] and all(name.startswith("mine/") for name in second["trained"])
    assert len(second["trained"]) == 3  # mine's 2 LR-search runs and its final run
    assert all(name.startswith("synthetic_fg/") for name in second["skipped"])
    after = _train_runs(experiment)
    added = {run_id: name for run_id, name in after.items() if run_id not in before}
    assert sorted(added.values()) == sorted(
        ["mine/lrsearch/vit/lr0.03/seed1", "mine/lrsearch/vit/lr0.01/seed1", "mine/vit/seed1"]
    )
    # the new version is registered; synthetic_fg's champion stays where it was
    decision = second["registry"]["mine/vit"]
    assert decision["version"] != mine_v1
    assert not second["registry"]["synthetic_fg/vit"]["moved"]
    info = describe_model("glsim-mine-vit")
    new = next(v for v in info["versions"] if str(v["version"]) == str(decision["version"]))
    old = next(v for v in info["versions"] if str(v["version"]) == str(mine_v1))
    assert new["tags"]["data_dvc_md5"] != old["tags"]["data_dvc_md5"]
    # measured on other data than the champion: not compared, so not promoted
    assert decision["alias"] == "challenger" and "not comparable" in decision["reason"]
    assert info["aliases"]["champion"] == mine_v1

    every_run = _train_runs(experiment, "")
    third = sweep(params_file=str(path), use_deployments=False)
    assert third["trained"] == [] and len(third["skipped"]) == 6
    assert _train_runs(experiment) == after
    # nothing changed: no run at all, neither validation's nor the aggregate's
    assert _train_runs(experiment, "") == every_run
    assert all(not d["moved"] for d in third["registry"].values())
