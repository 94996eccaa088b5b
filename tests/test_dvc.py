"""`dvc repro` itself on a tiny params file, in a fresh clone of this repo: it runs end to
end, a second run does nothing, and a changed param reruns only the stages that read it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import TINY_VIT

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def tiny_params_yaml() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"]["num_threads"] = 1  # as tests/tiny.py: tiny models run faster on one
    params["data"].update(image_size=32)
    params["data"]["synthetic"].update(
        num_classes=3, train_per_class=6, test_per_class=3, canvas_size=43, object_size=[8, 12]
    )
    params["model"]["backbone"]["overrides"] = dict(TINY_VIT)
    params["pretrain"].update(
        num_classes=4, images_per_epoch=32, epochs=1, batch_size=16, warmup_steps=1, test_images=32
    )
    params["train"].update(epochs=1, batch_size=6, warmup_steps=1)
    params["protocol"].update(seeds=[1], lr_grid=[0.01])
    params["cost"].update(
        models=["vit", "glsim"], image_sizes=[32], batch_sizes=[1, 4], repeats=1, min_time=0.01,
        dfsm_image_sizes=[32],
    )  # fmt: skip
    params["ablations"]["variants"] = {
        "glsim_no_aggregator": {"model": "glsim", "set": {"model.glsim.aggregator": False}}
    }
    params["ablations"]["tables"] = {
        "table5": {
            "title": "Table 5",
            "columns": ["top-1"],
            "rows": {"ViT": ["vit"], "GLSim": ["glsim"]},
        }
    }
    params["eval"]["batch_size"] = 8
    return params


def run(cmd: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out.stdout + out.stderr


def changed_stages(status: str) -> set[str]:
    return {
        line.rstrip(":")
        for line in status.splitlines()
        if line and not line.startswith((" ", "\t"))
    }


def test_dvc_repro_end_to_end_then_nothing_then_only_what_reads_a_param(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params_yaml(), sort_keys=False))

    run(["dvc", "repro"], repo)
    results = json.loads((repo / "reports/results.json").read_text())
    assert set(results["synthetic_fg"]) >= {"vit", "glsim", "ablations"}
    assert (repo / "mlflow.db").is_file()

    again = run(["dvc", "repro"], repo)
    assert "Running stage" not in again
    # the main pipeline's status; curve/dvc.yaml (a pipeline of its own, not run here) reads
    # the pretraining params this file changed, so a bare `dvc status` lists it too
    assert "Data and pipelines are up to date" in run(["dvc", "status", "dvc.yaml"], repo)
    assert "curve/dvc.yaml:localisation_curve" in changed_stages(run(["dvc", "status"], repo))

    # a new seed: only that seed's runs and the aggregate are stale
    params = yaml.safe_load((repo / "params.yaml").read_text())
    original = yaml.safe_dump(params, sort_keys=False)
    params["protocol"]["seeds"] = [1, 2]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert changed_stages(run(["dvc", "status", "dvc.yaml"], repo)) == {
        "train@synthetic_fg-vit-2", "train@synthetic_fg-glsim-2",
        "evaluate@synthetic_fg-vit-2", "evaluate@synthetic_fg-glsim-2",
        "ablation@synthetic_fg-glsim_no_aggregator-2", "aggregate",
    }  # fmt: skip
    (repo / "params.yaml").write_text(original)

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["glsim"]["aggregator"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = changed_stages(run(["dvc", "status", "dvc.yaml"], repo))
    assert stale == {
        "lr_search@synthetic_fg-glsim",
        "train@synthetic_fg-glsim-1",
        "ablation@synthetic_fg-glsim_no_aggregator-1",
        "cost",  # benches the GLSim model that param builds
    }


def test_dvc_repro_on_a_user_imagefolder_and_a_user_csv_of_200_classes_each(tmp_path):
    """What README's "Your own data" tells a user to write, with data shaped like CUB (200
    classes): both datasets go through every stage, each folder under its plain name."""
    from tiny import write_csv_dataset, write_imagefolder

    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    folder = write_imagefolder(tmp_path / "user data" / "birds", classes=200, train=2, test=1)
    csv = write_csv_dataset(tmp_path / "user data" / "plants", classes=200, train=2, test=1)
    params = tiny_params_yaml()
    params["data"]["datasets"] = {
        "birds": {"source": f"imagefolder:{folder}"},
        "plants": {"source": f"csv:{csv}", "model.glsim.top_k": 4},
    }
    params["data"]["dataset"] = "birds"
    params["train"]["batch_size"] = 32
    params["ablations"] = {"variants": {}, "tables": {}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    run(["dvc", "repro"], repo)
    results = json.loads((repo / "reports/results.json").read_text())
    assert set(results) == {"birds", "plants"}
    for dataset in ("birds", "plants"):
        assert set(results[dataset]) == {"vit", "glsim"}
        index = json.loads((repo / f"data/shards/{dataset}/index.json").read_text())
        assert index["num_classes"] == 200
        report = json.loads(
            (repo / f"reports/datasets/{dataset}/eval/glsim/seed1.json").read_text()
        )
        assert report["count"] == 200 and "per_class" not in report
        table = (repo / f"reports/datasets/{dataset}/eval/glsim/seed1_per_class.csv").read_text()
        assert len(table.splitlines()) == 1 + 200
    assert "Running stage" not in run(["dvc", "repro"], repo)
