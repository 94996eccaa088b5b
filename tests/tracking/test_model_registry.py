"""The model registry on a real ``mlflow server`` (sqlite backend, loopback): the seed is
chosen by train loss and the champion by val top-1, never by test top-1; provenance is the
run's; logged weights other than the run folder's are refused; the promotion rule's cases
(first, better, worse, within the margin, failed validation, not comparable); rollback with
its history, and a rolled-back version not promoted again; concurrent promotes; the
``glsim registry`` commands; and ``models:/<name>@<alias>`` loading the registered model,
also after a run is retrained with other params.

Most runs are tiny: an ``nn.Linear`` logged as each run's model, with the checkpoint, eval
and validation reports written by the test into the tiny params' folders (no training).
One test trains a tiny ViT twice."""

from __future__ import annotations

import json
import threading
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
from glsim.protocol.specs import search_params, search_spec  # noqa: E402
from glsim.tracking.mlflow import RUN_ID_FILE, log_pytorch_model  # noqa: E402
from glsim.tracking.registry import (  # noqa: E402
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    LOCK_SUFFIX,
    RegistryError,
    alias_lock,
    champion_stack,
    decide,
    history,
    promote,
    register_best,
    rollback,
    weights_digest,
)

DATASET = "synthetic_fg"


# ---------------------------------------------------------------------------------------
# the rule and the params, without a server


class FakeVersion:
    def __init__(
        self, version: str, val: float | None, validation: str = "passed", data: str = "d1"
    ) -> None:
        self.name, self.version = "m", version
        self.tags = {"validation": validation, "val_data": data, "val_seeds": "[0]"}
        if val is not None:
            self.tags["val_top1"] = f"{val:.4f}"
        self.tags["top1_mean"] = "99.0000"  # the test top-1: never compared


@pytest.mark.parametrize(
    ("val", "validation", "champion", "margin", "alias", "says"),
    [
        (50.0, "passed", None, 0.0, CHAMPION, "first champion"),
        (50.0, "failed", None, 0.0, CHALLENGER, "validation failed"),
        (61.0, "passed", 60.0, 0.0, CHAMPION, "+1.0000 points"),
        (59.0, "passed", 60.0, 0.0, CHALLENGER, "does not beat"),
        (60.0, "passed", 60.0, 0.0, CHALLENGER, "does not beat"),  # a tie is no gain
        (61.0, "passed", 60.0, 1.0, CHALLENGER, "margin 1"),  # not *more* than the margin
        (61.5, "passed", 60.0, 1.0, CHAMPION, "beats it"),
        (90.0, "missing", 60.0, 0.0, CHALLENGER, "validation missing"),
        (None, "passed", 60.0, 0.0, CHALLENGER, "no val top-1"),
        (90.0, "passed", None, 0.0, CHAMPION, "first champion"),
    ],
)
def test_promotion_rule_compares_val_top1(val, validation, champion, margin, alias, says):
    champ = FakeVersion("1", champion) if champion is not None else None
    got, reason = decide(FakeVersion("2", val, validation), champ, margin)
    assert got == alias and says in reason and "test" not in reason


def test_promotion_rule_refuses_to_compare_measures_of_other_data():
    got, reason = decide(FakeVersion("2", 90.0, data="d2"), FakeVersion("1", 10.0), 0.0)
    assert got == CHALLENGER and "not comparable" in reason and "d2" in reason


def test_weights_digest_sees_one_changed_value():
    net = torch.nn.Linear(4, 3)
    before = weights_digest(net.state_dict())
    assert weights_digest({k: v.clone() for k, v in net.state_dict().items()}) == before
    with torch.no_grad():
        net.bias[0] += 1e-7
    assert weights_digest(net.state_dict()) != before


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
    """Finished 'runs' of a tiny params tree, written without training: each seed's eval
    report (test top-1) and ``train.json`` (final train loss), the LR search's reports (val
    top-1), the shard indices, and for the seed the registry picks, a checkpoint and an
    MLflow run tagged with its run key that logged the same small Linear."""

    def __init__(self, root: Path, uri: str, margin: float = 0.0) -> None:
        self.params = tiny_params(
            root,
            base={"experiment": f"registry-{root.name}"},
            protocol={"seeds": [1, 2]},
            registry={"margin": margin, "name_template": f"glsim-{root.name}-{{model}}"},
        )
        self.p = for_dataset(self.params, DATASET)
        root.mkdir(parents=True, exist_ok=True)
        self.uri, self.client = uri, MlflowClient(uri)
        mlflow.set_tracking_uri(uri)
        self.experiment = self.client.create_experiment(self.params.base.experiment)
        self.params_file = root / "params.yaml"
        self.params_file.write_text(yaml.safe_dump(self.params.model_dump(mode="json")))
        self.models: dict[str, torch.nn.Linear] = {}  # run id -> the model it logged
        self.lr = self.p.protocol.lr_grid[-1]
        for kind, content in (("final", "final shards"), ("lrsearch", "search split")):
            self.write_index(kind, content)

    def write_index(self, kind: str, content: str) -> None:
        index = runs.shards_dir(self.p, kind) / "index.json"
        index.parent.mkdir(parents=True, exist_ok=True)
        index.write_text(json.dumps({"what": content}))

    def write(self, path: Path, obj) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    def finish(
        self,
        model: str,
        top1: dict[int, float],
        *,
        val: float = 50.0,
        loss: dict[int, float] | None = None,
        validation: bool = True,
        logged: torch.nn.Module | None = None,
        run_tags: dict[str, str] | None = None,
    ) -> str:
        """Write the reports of a finished model (test top-1 and, by default, the final
        train loss lower for a higher test top-1) and log the chosen seed's run; its id.
        ``logged``: a model logged instead of the checkpoint's."""
        p, lr = self.p, self.lr
        loss = loss or {s: 100.0 - acc for s, acc in top1.items()}
        for seed, acc in top1.items():
            spec = runs.RunSpec(model=model, seed=seed, lr=lr)
            report = {"dataset": DATASET, "model": model, "seed": seed, "lr": lr, "top1": acc}
            self.write(
                runs.eval_report(p, model, seed), {**report, "run_key": runs.run_key(p, spec)}
            )
            self.write(spec.run_dir(p) / "train.json", {"history": [{"train/loss": loss[seed]}]})
        sp = search_params(p)
        for i, grid_lr in enumerate(p.protocol.lr_grid):
            spec = search_spec(p, model, grid_lr)
            top = val if grid_lr == lr else val - 1 - i
            self.write(spec.report_path(sp), {"run_key": runs.run_key(sp, spec), "top1": top})
        self.write(runs.lr_report(p, model), {"grid": list(p.protocol.lr_grid), "chosen_lr": lr})
        self.write(runs.validation_report(p), {"success": validation, "results": []})
        seed = min(loss, key=loss.get)
        spec = runs.RunSpec(model=model, seed=seed, lr=lr)
        key = runs.run_key(p, spec)
        net = torch.nn.Linear(4, 3)
        torch.save(
            {"model": net.state_dict(), "state": {"epoch": 2, "step": 4, "history": []},
             "extra": {"run_key": key}},
            spec.run_dir(p) / "last.pt",
        )  # fmt: skip
        tags = {
            "git_commit": "c0ffee", "data_dvc_md5": "d5", "run_key": key,
            "params_hash": p.digest(), "runtime.torch": "2.x", "runtime.cpu_model": "cpu",
            **(run_tags or {}),
        }  # fmt: skip
        with mlflow.start_run(experiment_id=self.experiment) as run:
            mlflow.set_tags({k: v for k, v in tags.items() if v})
            log_pytorch_model(logged if logged is not None else net, name="model")
        (spec.run_dir(p) / RUN_ID_FILE).write_text(run.info.run_id)
        self.models[run.info.run_id] = net
        return run.info.run_id

    def promote(self, model: str):
        mv = register_best(self.params, DATASET, model, client=self.client)
        return mv, promote(
            mv.name, mv.version, margin=self.params.registry.margin, client=self.client
        )


def test_seed_and_champion_are_chosen_by_loss_and_val_never_test(shared_server, tmp_path):
    lab = Lab(tmp_path / "select", shared_server.uri)
    # seed 1 is better on test, seed 2 converged further: seed 2 is registered
    run_id = lab.finish("vit", {1: 60.0, 2: 50.0}, loss={1: 0.9, 2: 0.5}, val=70.0)
    v1, d = lab.promote("vit")
    t = v1.tags
    assert (v1.run_id, t["seed"], t["seed_top1"], t["top1_mean"]) == (
        run_id,
        "2",
        "50.0000",
        "55.0000",
    )
    assert json.loads(t["seed_train_loss"]) == {"1": 0.9, "2": 0.5}
    assert json.loads(t["seeds"]) == {"1": 60.0, "2": 50.0}
    assert t["val_top1"] == "70.0000" and "train loss" in t["selected_by"]
    assert (
        t["val_data"].startswith("index-sha256:")
        and t["val_seeds"] == f"[{lab.p.protocol.search_seed}]"
    )
    assert d.alias == CHAMPION
    # far better on test, worse on val: not the champion
    lab.finish("vit", {1: 95.0, 2: 96.0}, val=65.0)
    v2, d = lab.promote("vit")
    assert d.alias == CHALLENGER and "val top-1 65.0000 vs champion v1 70.0000" in d.reason
    # better on val, but measured on another search split: not compared, not promoted
    lab.write_index("lrsearch", "another split")
    lab.finish("vit", {1: 40.0, 2: 41.0}, val=99.0)
    v3, d = lab.promote("vit")
    assert d.alias == CHALLENGER and "not comparable" in d.reason
    assert lab.client.get_model_version_by_alias(v1.name, CHAMPION).version == v1.version


def test_provenance_is_the_runs_own(shared_server, tmp_path):
    lab = Lab(tmp_path / "prov", shared_server.uri)
    run_id = lab.finish("vit", {1: 40.0, 2: 50.0}, run_tags={"git_commit": "abc123"})
    mv = register_best(lab.params, DATASET, "vit", client=lab.client)
    run_tags = lab.client.get_run(run_id).data.tags
    keys = [
        "git_commit",
        "params_hash",
        "data_dvc_md5",
        "run_key",
        "runtime.torch",
        "runtime.cpu_model",
    ]
    assert {k: mv.tags[k] for k in keys} == {k: run_tags[k] for k in keys}
    assert mv.tags["git_commit"] == "abc123" and mv.tags["run_id"] == run_id
    assert mv.tags["run_key"] == runs.run_key(lab.p, runs.RunSpec(model="vit", seed=2, lr=lab.lr))
    assert mv.tags["weights_sha256"] == weights_digest(lab.models[run_id].state_dict())
    logged = lab.client.search_logged_models(
        experiment_ids=[lab.experiment], filter_string=f"source_run_id = '{run_id}'"
    )
    assert mv.source == f"models:/{logged[0].model_id}"
    # the same result again is the same version, not a new one
    assert register_best(lab.params, DATASET, "vit", client=lab.client).version == mv.version
    # a run that recorded no dvc hash: the shard index's digest, never empty
    lab.finish("vit", {1: 40.0, 2: 51.0}, run_tags={"data_dvc_md5": ""})
    again = register_best(lab.params, DATASET, "vit", client=lab.client)
    assert again.version != mv.version and again.tags["data_dvc_md5"].startswith("index-sha256:")


def test_logged_weights_other_than_the_run_folders_are_refused(
    shared_server, tmp_path, monkeypatch, capsys
):
    lab = Lab(tmp_path / "weights", shared_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_server.uri)
    lab.finish("vit", {1: 40.0, 2: 50.0}, logged=torch.nn.Linear(4, 3))  # not the checkpoint's
    cmd = ["registry", "promote", DATASET, "vit", "--params", str(lab.params_file)]
    capsys.readouterr()
    assert main(cmd) == 2
    err = capsys.readouterr().err.strip()
    assert "holds the run folder's final weights" in err and "\n" not in err
    assert not lab.client.search_model_versions("name = 'glsim-weights-vit'")


def test_rolled_back_version_is_not_promoted_again(shared_server, tmp_path):
    lab = Lab(tmp_path / "back", shared_server.uri)
    c = lab.client
    lab.finish("vit", {1: 50.0, 2: 52.0}, val=50.0)
    v1, _ = lab.promote("vit")
    lab.finish("vit", {1: 60.0, 2: 62.0}, val=60.0)
    v2, d = lab.promote("vit")
    assert (d.alias, d.version) == (CHAMPION, v2.version)
    rollback(v1.name, reason="misbehaves", client=c)
    # the next sweep registers the same result: the same version, left rolled back
    again, d = lab.promote("vit")
    assert again.version == v2.version and not d.moved and "rolled back" in d.reason
    assert c.get_model_version_by_alias(v1.name, CHAMPION).version == v1.version
    assert [m["action"] for m in history(c, v1.name)] == ["promote", "promote", "rollback"]
    # something changed: a new version, promoted by the rule
    lab.finish("vit", {1: 61.0, 2: 63.0}, val=61.0)
    v3, d = lab.promote("vit")
    assert v3.version not in (v1.version, v2.version) and d.alias == CHAMPION


def test_concurrent_promotes_leave_a_consistent_history(shared_server, tmp_path):
    lab = Lab(tmp_path / "race", shared_server.uri)
    versions = []
    for val in (50.0, 60.0, 55.0, 70.0):
        lab.finish("vit", {1: val, 2: val}, val=val)
        versions.append(register_best(lab.params, DATASET, "vit", client=lab.client))
    name = versions[0].name
    barrier = threading.Barrier(len(versions))
    errors: list[BaseException] = []

    def go(mv) -> None:
        try:
            barrier.wait()
            promote(name, mv.version, margin=0.0, client=MlflowClient(shared_server.uri))
        except BaseException as err:  # noqa: BLE001 - reported by the assert below
            errors.append(err)

    threads = [threading.Thread(target=go, args=(mv,)) for mv in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    moves = history(lab.client, name)
    assert len(moves) == len(versions)  # not one move lost
    holder: dict[str, str | None] = {}
    for m in moves:  # every move names the holder the one before it left
        assert m["previous"] == holder.get(m["alias"]), moves
        holder[m["alias"]] = m["version"]
    champion = lab.client.get_model_version_by_alias(name, CHAMPION).version
    assert champion == holder[CHAMPION]
    assert name + LOCK_SUFFIX not in {m.name for m in lab.client.search_registered_models()}


def test_alias_lock_waits_for_its_holder_and_breaks_a_stale_one(shared_server, tmp_path):
    client, name = MlflowClient(shared_server.uri), f"glsim-{tmp_path.name}-lock"
    with alias_lock(client, name):
        with (
            pytest.raises(RegistryError, match="held the alias lock") as err,
            alias_lock(client, name, wait_s=0.5),
        ):
            pass
        assert "\n" not in str(err.value)
    # a lock left by a process that died (older than stale_s) is broken
    client.create_registered_model(name + LOCK_SUFFIX, tags={"owner": "gone", "since": "0"})
    with alias_lock(client, name, wait_s=5):
        assert client.get_registered_model(name + LOCK_SUFFIX).tags["owner"] != "gone"
    assert name + LOCK_SUFFIX not in {m.name for m in client.search_registered_models()}


def test_promotion_cases_rollback_and_load_by_alias(shared_server, tmp_path):
    lab = Lab(tmp_path / "promo", shared_server.uri, margin=1.0)
    c = lab.client

    first = lab.finish("glsim", {1: 50.0, 2: 52.0}, val=50.0)
    v1, d = lab.promote("glsim")
    assert (d.alias, d.moved, d.previous) == (CHAMPION, True, None)

    lab.finish("glsim", {1: 60.0, 2: 62.0}, val=60.0)  # better by 10 points: champion moves
    v2, d = lab.promote("glsim")
    assert (d.alias, d.version, d.previous) == (CHAMPION, v2.version, v1.version)

    lab.finish("glsim", {1: 55.0, 2: 57.0}, val=55.0)  # worse: challenger
    v3, d = lab.promote("glsim")
    assert d.alias == CHALLENGER and "does not beat" in d.reason

    lab.finish("glsim", {1: 61.5, 2: 62.0}, val=60.75)  # +0.75 points, margin 1: challenger
    v4, d = lab.promote("glsim")
    assert d.alias == CHALLENGER and d.previous == v3.version and "margin 1" in d.reason

    lab.finish("glsim", {1: 90.0, 2: 90.0}, val=90.0, validation=False)  # validation failed
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

    lab.finish("vit", {1: 70.0, 2: 72.0}, val=70.0)
    assert main(promote_cmd) == 0
    out = capsys.readouterr().out
    assert f"{name} v1: seed 2" in out and "champion now v1: first champion" in out
    assert main(promote_cmd) == 0  # nothing new: the same version stays champion
    assert "champion stays v1: already the champion" in capsys.readouterr().out

    lab.finish("vit", {1: 80.0, 2: 80.0}, val=80.0)
    assert main(promote_cmd) == 0
    assert "champion now v2" in capsys.readouterr().out

    assert main(["registry", "show", name]) == 0
    out = capsys.readouterr().out
    assert "aliases: champion -> v2" in out and "v2 [champion]: val top-1 80.0000" in out
    assert "promote: champion -> v2 (was v1): val top-1 80.0000" in out

    assert main(["registry", "rollback", name, "--reason", "drift"]) == 0
    assert f"{name}: champion v2 -> v1 (rollback from v2: drift)" in capsys.readouterr().out
    assert main(promote_cmd) == 0  # the rolled-back result again: no alias
    assert "v2 gets no alias: rolled back" in capsys.readouterr().out
    assert main(["registry", "show", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["aliases"] == {CHAMPION: "1"} and info["history"][-1]["action"] == "rollback"

    assert main(["registry", "show", "glsim-nothing-here"]) == 2
    assert "error: no registered model 'glsim-nothing-here'" in capsys.readouterr().err


def test_retrained_run_registers_its_new_weights(shared_server, tmp_path, monkeypatch):
    """A run folder retrained with other params: the version registered after it holds the
    new weights (not the model logged before the retrain), and each alias loads its own."""
    from glsim.protocol.data import prepare, shard
    from glsim.protocol.specs import final_spec
    from glsim.protocol.train import train_final
    from glsim.tracking.registry import register_and_promote
    from glsim.train.run import load_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_server.uri)
    params = tiny_params(
        tmp_path,
        base={"experiment": "registry-retrain"},
        protocol={"seeds": [1], "lr_grid": []},
        registry={"margin": 0.0, "name_template": "glsim-retrain-{model}"},
    )
    client = MlflowClient(shared_server.uri)
    p = for_dataset(params, DATASET)
    prepare(p)
    shard(p)
    validation = runs.validation_report(p)
    validation.parent.mkdir(parents=True, exist_ok=True)
    validation.write_text(json.dumps({"success": True}))
    x = torch.randn(3, 3, 32, 32)

    def train_and_register(tree):
        spec = final_spec(tree, "vit", 1)
        train_final(tree, "vit", 1)
        report = {"dataset": DATASET, "model": "vit", "seed": 1, "lr": spec.lr, "top1": 50.0}
        report["run_key"] = runs.run_key(tree, spec)
        runs.eval_report(tree, "vit", 1).write_text(json.dumps(report))
        mv, decision = register_and_promote(tree, DATASET, "vit", client=client)
        net, _ = load_run(tree, spec)
        with torch.no_grad():
            return mv, decision, net.eval()(x)

    runs.eval_report(p, "vit", 1).parent.mkdir(parents=True, exist_ok=True)
    v1, d1, logits1 = train_and_register(p)
    retrained = p.with_overrides({"train.weight_decay": 0.5}, source="test")
    v2, d2, logits2 = train_and_register(retrained)
    assert (d1.alias, d2.alias) == (CHAMPION, CHALLENGER) and v2.version != v1.version
    assert v2.tags["run_key"] != v1.tags["run_key"]
    assert not torch.allclose(logits1, logits2, atol=1e-6)
    for alias, want in ((CHAMPION, logits1), (CHALLENGER, logits2)):
        loaded = mlflow.pytorch.load_model(f"models:/{v1.name}@{alias}").eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), want, atol=1e-6, rtol=0)


def test_a_seed_report_of_another_key_is_refused(shared_server, tmp_path):
    """Two configurations' seeds are never averaged into one top1_mean: a seed's report of
    another run key stops the registration in one line, before anything is registered."""
    lab = Lab(tmp_path / "stale", shared_server.uri)
    lab.finish("vit", {1: 60.0, 2: 50.0}, loss={1: 0.9, 2: 0.5}, val=70.0)
    report = runs.eval_report(lab.p, "vit", 1)
    lab.write(report, {**json.loads(report.read_text()), "run_key": "0123456789abcdef"})
    with pytest.raises(RegistryError, match=r"seed1\.json \(key 0123456789abcdef\)"):
        lab.promote("vit")
