"""The model registry on a real ``mlflow server`` (sqlite backend, loopback): the best seed
is registered with its tags, the promotion rule's cases (first, better, worse, within the
margin, failed validation), rollback with its history, the ``glsim registry`` commands,
and ``models:/<name>@champion`` loading a model that predicts like the registered one.

Runs are tiny: an ``nn.Linear`` logged as each run's model, and eval/validation reports
written by the test into the tiny params' folders (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
import torch  # noqa: E402
import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from tiny import tiny_params  # noqa: E402

from glsim import runs  # noqa: E402
from glsim.cli import main  # noqa: E402
from glsim.config import ParamsError, for_dataset, params_from_dict  # noqa: E402
from glsim.tracking.mlflow import RUN_ID_FILE, log_pytorch_model  # noqa: E402
from glsim.tracking.registry import (  # noqa: E402
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    RegistryError,
    champion_stack,
    decide,
    history,
    promote,
    register_best,
    rollback,
)

DATASET = "synthetic_fg"


# ---------------------------------------------------------------------------------------
# the rule and the params, without a server


class FakeVersion:
    def __init__(self, version: str, top1: float, validation: str = "passed") -> None:
        self.name, self.version = "m", version
        self.tags = {"top1_mean": f"{top1:.4f}", "validation": validation}


@pytest.mark.parametrize(
    ("top1", "validation", "champion", "margin", "alias", "says"),
    [
        (50.0, "passed", None, 0.0, CHAMPION, "first champion"),
        (50.0, "failed", None, 0.0, CHALLENGER, "validation failed"),
        (61.0, "passed", 60.0, 0.0, CHAMPION, "+1.0000 points"),
        (59.0, "passed", 60.0, 0.0, CHALLENGER, "does not beat"),
        (60.0, "passed", 60.0, 0.0, CHALLENGER, "does not beat"),  # a tie is no gain
        (61.0, "passed", 60.0, 1.0, CHALLENGER, "margin 1"),  # not *more* than the margin
        (61.5, "passed", 60.0, 1.0, CHAMPION, "beats it"),
        (90.0, "missing", 60.0, 0.0, CHALLENGER, "validation missing"),
    ],
)
def test_promotion_rule(top1, validation, champion, margin, alias, says):
    champ = FakeVersion("1", champion) if champion is not None else None
    got, reason = decide(FakeVersion("2", top1, validation), champ, margin)
    assert got == alias and says in reason


def test_champion_stack_replays_promotions_and_rollbacks():
    def e(action, v, prev):
        return {"alias": CHAMPION, "action": action, "version": v, "previous": prev}

    moves = [e("promote", "1", None), e("promote", "2", "1"), e("promote", "4", "2")]
    assert champion_stack(moves) == ["1", "2", "4"]
    moves.append(e("rollback", "2", "4"))
    assert champion_stack(moves) == ["1", "2"]
    moves.append({"alias": CHALLENGER, "action": "promote", "version": "5", "previous": None})
    assert champion_stack(moves) == ["1", "2"]


def test_registry_params(tmp_path):
    p = tiny_params(tmp_path)
    assert p.registry.margin == 0.0 and p.registry.name_template == "glsim-{dataset}-{model}"
    with pytest.raises(ParamsError, match=r"registry.name_template.*\{dataset\} and \{model\}"):
        params_from_dict({"registry": {"name_template": "glsim-{task}"}})
    with pytest.raises(ParamsError, match="registry.margin"):
        params_from_dict({"registry": {"margin": -1}})
    repo = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())
    assert repo["registry"] == {"margin": 0.0, "name_template": "glsim-{dataset}-{model}"}


# ---------------------------------------------------------------------------------------
# a real server


class Lab:
    """Finished 'runs' of a tiny params tree: eval reports per seed, the best seed's run
    folder with its MLflow run id, and that run's logged model (a small Linear)."""

    def __init__(self, root: Path, uri: str, margin: float = 0.0) -> None:
        self.params = tiny_params(
            root,
            protocol={"seeds": [1, 2]},
            registry={"margin": margin, "name_template": f"glsim-{root.name}-{{model}}"},
        )
        self.p = for_dataset(self.params, DATASET)
        root.mkdir(parents=True, exist_ok=True)
        self.uri, self.client = uri, MlflowClient(uri)
        mlflow.set_tracking_uri(uri)
        self.experiment = self.client.create_experiment(f"registry-{root.name}")
        self.params_file = root / "params.yaml"
        self.params_file.write_text(yaml.safe_dump(self.params.model_dump(mode="json")))
        self.models: dict[str, torch.nn.Linear] = {}  # run id -> the model it logged

    def finish(self, model: str, top1: dict[int, float], *, validation: bool = True) -> str:
        """Write the seeds' eval reports and log the best seed's run; its run id."""
        for seed, acc in top1.items():
            report = {"dataset": DATASET, "model": model, "seed": seed, "lr": 0.01, "top1": acc}
            path = runs.eval_report(self.p, model, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report))
        val = runs.validation_report(self.p)
        val.parent.mkdir(parents=True, exist_ok=True)
        val.write_text(json.dumps({"success": validation, "results": []}))
        best = max(top1, key=top1.get)
        run_dir = runs.RunSpec(model=model, seed=best).run_dir(self.p)
        run_dir.mkdir(parents=True, exist_ok=True)
        net = torch.nn.Linear(4, 3)
        with mlflow.start_run(experiment_id=self.experiment) as run:
            mlflow.set_tags({"git_commit": "c0ffee", "data_dvc_md5": "d5"})
            log_pytorch_model(net, name="model")
        (run_dir / RUN_ID_FILE).write_text(run.info.run_id)
        self.models[run.info.run_id] = net
        return run.info.run_id

    def promote(self, model: str):
        mv = register_best(self.params, DATASET, model, client=self.client)
        return mv, promote(
            mv.name, mv.version, margin=self.params.registry.margin, client=self.client
        )


def test_register_best_tags_the_best_seed(shared_server, tmp_path):
    lab = Lab(tmp_path / "tags", shared_server.uri)
    run_id = lab.finish("vit", {1: 40.0, 2: 50.0})
    mv = register_best(lab.params, DATASET, "vit", client=lab.client)
    assert mv.name == "glsim-tags-vit" and mv.run_id == run_id
    t = mv.tags
    assert (t["seed"], t["top1_mean"], t["top1_std"]) == ("2", "45.0000", "7.0711")
    assert json.loads(t["seeds"]) == {"1": 40.0, "2": 50.0}
    spec = runs.RunSpec(model="vit", seed=2, lr=0.01)
    assert t["run_key"] == runs.run_key(lab.p, spec)  # no checkpoint, no tag: recomputed
    assert t["params_hash"] == lab.p.digest() and t["validation"] == "passed"
    assert (t["git_commit"], t["data_dvc_md5"], t["run_id"]) == ("c0ffee", "d5", run_id)
    assert mv.source.startswith("models:/")
    # the same result again is the same version, not a new one
    assert register_best(lab.params, DATASET, "vit", client=lab.client).version == mv.version
    # a checkpoint's run key wins over a recomputed one
    torch.save({"extra": {"run_key": "from-ckpt"}}, spec.run_dir(lab.p) / "last.pt")
    again = register_best(lab.params, DATASET, "vit", client=lab.client)
    assert again.version != mv.version and again.tags["run_key"] == "from-ckpt"


def test_promotion_cases_rollback_and_load_by_alias(shared_server, tmp_path):
    lab = Lab(tmp_path / "promo", shared_server.uri, margin=1.0)
    c = lab.client

    first = lab.finish("glsim", {1: 50.0, 2: 52.0})
    v1, d = lab.promote("glsim")
    assert (d.alias, d.moved, d.previous) == (CHAMPION, True, None)

    lab.finish("glsim", {1: 60.0, 2: 62.0})  # better by 10 points: champion moves
    v2, d = lab.promote("glsim")
    assert (d.alias, d.version, d.previous) == (CHAMPION, v2.version, v1.version)

    lab.finish("glsim", {1: 55.0, 2: 57.0})  # worse: challenger
    v3, d = lab.promote("glsim")
    assert d.alias == CHALLENGER and "does not beat" in d.reason

    lab.finish("glsim", {1: 61.5, 2: 62.0})  # +0.75 points, margin 1: challenger
    v4, d = lab.promote("glsim")
    assert d.alias == CHALLENGER and d.previous == v3.version and "margin 1" in d.reason

    lab.finish("glsim", {1: 90.0, 2: 90.0}, validation=False)  # far better, validation failed
    v5, d = lab.promote("glsim")
    assert d.alias == CHALLENGER and "validation failed" in d.reason
    aliases = c.get_registered_model(v1.name).aliases
    assert aliases == {CHAMPION: v2.version, CHALLENGER: v5.version}

    d = rollback(v1.name, reason="v2 misbehaves in production", client=c)
    assert (d.version, d.previous) == (v1.version, v2.version)
    assert c.get_model_version_by_alias(v1.name, CHAMPION).version == v1.version
    assert "rolled_back" in c.get_model_version(v1.name, v2.version).tags
    with pytest.raises(RegistryError, match="no previous holder"):
        rollback(v1.name, client=c)

    moves = history(c, v1.name)
    assert [(m["action"], m["alias"], m["version"]) for m in moves] == [
        ("promote", CHAMPION, v1.version),
        ("promote", CHAMPION, v2.version),
        ("promote", CHALLENGER, v3.version),
        ("promote", CHALLENGER, v4.version),
        ("promote", CHALLENGER, v5.version),
        ("rollback", CHAMPION, v1.version),
    ]
    assert all(m["time"].endswith("Z") and m["reason"] for m in moves)
    assert "production" in moves[-1]["reason"]
    assert json.loads(c.get_registered_model(v1.name).tags[HISTORY_TAG]) == moves
    notes = {v.version: c.get_model_version(v1.name, v.version).tags for v in (v1, v2, v5)}
    assert "promote -> champion" in notes[v2.version]["promotion"]
    assert "rollback -> champion" in notes[v1.version]["promotion"]
    assert "promote -> challenger: dataset validation failed" in notes[v5.version]["promotion"]
    assert "champion_until" in notes[v1.version] and "champion_until" in notes[v2.version]

    # the champion, loaded by alias, predicts like the model its run logged
    loaded = mlflow.pytorch.load_model(f"models:/{v1.name}@{CHAMPION}")
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), lab.models[first](x))


def test_registry_commands(shared_server, tmp_path, monkeypatch, capsys):
    lab = Lab(tmp_path / "cli", shared_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_server.uri)
    name = "glsim-cli-vit"
    promote_cmd = ["registry", "promote", DATASET, "vit", "--params", str(lab.params_file)]

    assert main(promote_cmd) == 2  # no eval reports yet: one line
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: synthetic_fg/vit: eval report(s) missing") and "\n" not in err

    lab.finish("vit", {1: 70.0, 2: 72.0})
    assert main(promote_cmd) == 0
    out = capsys.readouterr().out
    assert f"{name} v1: seed 2" in out and "champion now v1: first champion" in out
    assert main(promote_cmd) == 0  # nothing new: the same version stays champion
    assert "champion stays v1: already the champion" in capsys.readouterr().out

    lab.finish("vit", {1: 80.0, 2: 80.0})
    assert main(promote_cmd) == 0
    assert "champion now v2" in capsys.readouterr().out

    assert main(["registry", "show", name]) == 0
    out = capsys.readouterr().out
    assert "aliases: champion -> v2" in out and "v2 [champion]: top1 80.0000" in out
    assert "promote: champion -> v2 (was v1): mean test top-1 80.0000" in out

    assert main(["registry", "rollback", name, "--reason", "drift"]) == 0
    assert f"{name}: champion v2 -> v1 (rollback from v2: drift)" in capsys.readouterr().out
    assert main(["registry", "show", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["aliases"] == {CHAMPION: "1"} and info["history"][-1]["action"] == "rollback"

    assert main(["registry", "show", "glsim-nothing-here"]) == 2
    assert "error: no registered model 'glsim-nothing-here'" in capsys.readouterr().err
