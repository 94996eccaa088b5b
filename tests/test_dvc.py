"""`dvc repro` itself on a tiny params file, in a fresh clone of this repo: it runs end to
end, a second run does nothing, a changed param reruns only the stages that read it, every
module a stage runs is a code dep of it, and an edit to a module reruns exactly the stages
that execute it (a code change retrains a run, a comment does not)."""

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


def run(cmd: list[str], cwd: Path, **env_vars: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(cwd),  # the clone's glsim, not the installed checkout's
        **env_vars,
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


# Run in every Python process of a stage (a sitecustomize on PYTHONPATH): at exit, write the
# glsim files it imported, under the stage script that started it (inherited by children).
MODULE_RECORDER = """
import atexit, json, os, sys

if sys.argv and sys.argv[0].replace(os.sep, "/").startswith("pipelines/"):
    os.environ.setdefault("GLSIM_STAGE_SCRIPT", sys.argv[0])


def _record_glsim_modules():
    files = sorted(
        m.__file__ for m in list(sys.modules.values())
        if getattr(m, "__name__", "").split(".")[0] == "glsim" and getattr(m, "__file__", None)
    )
    script = os.environ.get("GLSIM_STAGE_SCRIPT")
    if files and script:
        out = os.path.join(os.environ["GLSIM_MODULES_DIR"], f"{os.getpid()}.json")
        with open(out, "w") as f:
            json.dump({"script": script, "files": files}, f)


atexit.register(_record_glsim_modules)
"""


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    """A clone of this repo after `dvc repro` on the tiny params, its stages' imported glsim
    modules recorded in ``<tmp>/modules/*.json`` (see MODULE_RECORDER). Tests restore what
    they change, except the last, which edits code."""
    tmp = tmp_path_factory.mktemp("dvc")
    repo = tmp / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params_yaml(), sort_keys=False))
    (tmp / "recorder").mkdir()
    (tmp / "recorder" / "sitecustomize.py").write_text(MODULE_RECORDER)
    (tmp / "modules").mkdir()
    run(
        ["dvc", "repro"], repo,
        PYTHONPATH=f"{repo}:{tmp / 'recorder'}", GLSIM_MODULES_DIR=str(tmp / "modules"),
    )  # fmt: skip
    return repo


def test_dvc_repro_end_to_end_then_nothing_then_only_what_reads_a_param(tiny_repo):
    repo = tiny_repo
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
        "aggregate",  # checks each report's run key, which hashes the model's params
    }
    (repo / "params.yaml").write_text(original)


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


def test_every_glsim_module_a_stage_ran_is_in_its_static_closure(tiny_repo):
    """What tests/test_stage_deps.py checks dvc.yaml against (the closure read from source)
    is never less than what a stage's processes import: run, every stage of the tiny repro."""
    from test_stage_deps import STAGES, stage_script

    from glsim.codebase import REPO_ROOT, closure

    executed: dict[str, set[str]] = {}
    for record in (tiny_repo.parent / "modules").glob("*.json"):
        entry = json.loads(record.read_text())
        files = {Path(f).resolve() for f in entry["files"]}
        assert all(f.is_relative_to(tiny_repo) for f in files), f"not the clone's glsim: {entry}"
        rels = {f.relative_to(tiny_repo).as_posix() for f in files}
        executed.setdefault(entry["script"], set()).update(rels)
    scripts = {
        stage_script(body, wdir).relative_to(REPO_ROOT).as_posix()
        for name, (body, wdir, _) in STAGES.items()
        if not name.startswith("curve/")  # a pipeline of its own, not run here
    }
    assert set(executed) == scripts, "every stage script ran and was recorded"
    for script, files in sorted(executed.items()):
        static = {f.relative_to(REPO_ROOT).as_posix() for f in closure([REPO_ROOT / script])}
        assert files <= static, f"{script} ran glsim files its closure misses: {files - static}"


def test_an_edit_reruns_exactly_the_stages_that_execute_it_and_code_retrains(tiny_repo):
    """Edits code in the clone (so it runs last, on the fixture's clone). An edit of the
    transforms makes every stage whose script executes them stale and no other; a comment
    in the training loop reruns its stages without retraining (run keys hash code, not
    comments); a code change there retrains."""
    from test_stage_deps import STAGES, stage_script

    from glsim.codebase import REPO_ROOT, closure

    def stages_executing(rel: str) -> set[str]:
        return {
            name
            for name, (body, wdir, _) in STAGES.items()
            if not name.startswith("curve/")
            and REPO_ROOT / rel in closure([stage_script(body, wdir)])
        }

    def append(rel: str, text: str) -> None:
        path = tiny_repo / rel
        path.write_text(path.read_text() + text)

    append("glsim/data/transforms.py", "\n_MUTATION = 1\n")
    stale = {
        name.split("@")[0] for name in changed_stages(run(["dvc", "status", "dvc.yaml"], tiny_repo))
    }
    assert stale == stages_executing("glsim/data/transforms.py")
    assert {"train", "evaluate"} <= stale and not stale & {"prepare", "shard", "pretrain"}
    subprocess.run(["git", "checkout", "glsim/data/transforms.py"], cwd=tiny_repo, check=True)
    assert "Data and pipelines are up to date" in run(["dvc", "status", "dvc.yaml"], tiny_repo)

    finished = "already finished with this configuration"
    append("glsim/train/loop.py", "\n# a comment changes no run key\n")
    out = run(["dvc", "repro"], tiny_repo)
    assert "Running stage 'train@synthetic_fg-glsim-1'" in out
    assert out.count(finished) >= 2, out[-3000:]  # each train stage: not repeated

    append("glsim/train/loop.py", "\n_MUTATION = 1\n")
    out = run(["dvc", "repro"], tiny_repo)
    assert "Running stage 'train@synthetic_fg-glsim-1'" in out
    assert finished not in out, out[-3000:]  # a code change: every run trained again
