"""A run is keyed by everything that makes it: change one input (the data under the same
source, the backbone weights, the training code, a setting that changes the bits) and the
finished run is trained again; change nothing and it is not. A report whose key is not the
run's current one is refused by the aggregate."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import imagefolder_params, tiny_params

from glsim import runs
from glsim.codebase import REPO_ROOT
from glsim.data.registry import prepare_dataset
from glsim.data.shards import write_shards
from glsim.errors import RunError
from glsim.protocol.pretrain import pretrain
from glsim.protocol.report import aggregate_reports
from glsim.protocol.specs import final_spec
from glsim.runs import RunSpec
from glsim.train.loop import resume_or_start
from glsim.train.run import train_run
from glsim.utils import atomic_write_json

SPEC = RunSpec("vit", 1)


def _reshard(params) -> None:
    """What ``dvc repro -f prepare@mine shard@mine`` does to the user's folder."""
    manifest = prepare_dataset(
        params.data.dataset_source, params.data.raw_dir, name="mine", params=params, force=True
    )
    shutil.rmtree(params.data.shards_dir / "mine")
    write_shards(manifest, params.data.shards_dir / "mine", max_count=64, max_bytes=1 << 22)


def test_corrected_data_under_the_same_source_retrains(tmp_path, capsys):
    params = imagefolder_params(tmp_path)
    first = runs.run_key(params, SPEC)
    train_run(params, SPEC, track=False)
    ckpt = SPEC.run_dir(params) / "last.pt"
    before = ckpt.read_bytes()

    # nothing changed: re-preparing and re-sharding gives the same data, the same key
    _reshard(params)
    assert runs.run_key(params, SPEC) == first
    capsys.readouterr()
    train_run(params, SPEC, track=False)
    assert "not repeated" in capsys.readouterr().out and ckpt.read_bytes() == before

    # the user moves an image to another class folder; the source string is the same
    src = tmp_path / "src" / "train"
    moved = src / "species_000" / "0.png"
    moved.rename(src / "species_001" / "moved.png")
    _reshard(params)
    assert runs.run_key(params, SPEC) != first
    capsys.readouterr()
    train_run(params, SPEC, track=False)
    out = capsys.readouterr().out
    assert "not repeated" not in out and "belongs to another configuration" in out
    assert ckpt.read_bytes() != before


def test_backbone_weights_content_is_in_the_key(tmp_path):
    weights = tmp_path / "models" / "backbone.safetensors"
    params = tiny_params(tmp_path, model={"backbone": {
        "name": "vit_tiny_patch16_224", "overrides": {"patch_size": 8, "embed_dim": 64,
        "depth": 2, "num_heads": 2}, "weights": str(weights)}})  # fmt: skip
    absent = runs.run_key(params, SPEC)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights of one pretraining")
    one = runs.run_key(params, SPEC)
    # a new file at the same path: another pretraining, or a user's other weights
    weights.write_bytes(b"weights of another pretraining")
    os.utime(weights, ns=(1, 1))  # not a question of the modification time
    two = runs.run_key(params, SPEC)
    assert len({absent, one, two}) == 3
    weights.write_bytes(b"weights of one pretraining")
    assert runs.run_key(params, SPEC) == one


def test_changed_pretraining_params_change_the_fine_tuning_key(tmp_path):
    params = tiny_params(tmp_path, model={"backbone": {
        "name": "vit_tiny_patch16_224", "overrides": {"patch_size": 8, "embed_dim": 64,
        "depth": 2, "num_heads": 2}, "weights": str(tmp_path / "models/backbone.safetensors")}})  # fmt: skip
    pretrain(params)
    first = runs.run_key(params, SPEC)
    changed = params.with_overrides({"pretrain.lr": 3e-3})
    pretrain(changed)
    assert runs.run_key(changed, SPEC) != first


@pytest.mark.parametrize(
    "override", [{"data.workers": 2}, {"base.num_threads": 2}, {"base.deterministic": True},
                 {"train.cpu_amp": "off"}, {"train.epochs": 3}],  # fmt: skip
)
def test_settings_that_change_the_bits_are_in_the_key(tmp_path, override):
    params = tiny_params(tmp_path, train={"cpu_amp": "bf16"})
    assert runs.run_key(params.with_overrides(override), SPEC) != runs.run_key(params, SPEC)


def test_compiling_the_step_is_not_in_the_key(tmp_path):
    """``base.compile`` changes how a step executes, not what run it is: a compiled run
    finds the eager run of its configuration finished (and resumes it)."""
    params = tiny_params(tmp_path)
    compiled = params.with_overrides({"base.compile": True})
    assert compiled.base.compile and runs.run_key(compiled, SPEC) == runs.run_key(params, SPEC)


def test_precision_is_keyed_as_resolved_not_as_written(tmp_path, monkeypatch):
    """``cpu_amp: auto`` is bf16 on one host and float32 on another: two keys."""
    params = tiny_params(tmp_path, train={"cpu_amp": "auto"})
    monkeypatch.setattr("glsim.utils.cpu_bf16_is_faster", lambda: True)
    native = runs.run_key(params, SPEC)
    monkeypatch.setattr("glsim.utils.cpu_bf16_is_faster", lambda: False)
    assert runs.run_key(params, SPEC) != native
    assert runs.execution_settings(params)["precision"] == "fp32"


def _code_digest(root: Path) -> str:
    code = "from glsim.runs import run_code_digest, pretrain_code_digest; print(run_code_digest(), pretrain_code_digest())"
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_training_code_is_in_the_key_but_not_its_comments(tmp_path):
    root = tmp_path / "clone"
    shutil.copytree(REPO_ROOT / "glsim", root / "glsim", ignore=shutil.ignore_patterns("__pycache__"))
    base = _code_digest(root)
    loop = root / "glsim" / "train" / "loop.py"
    text = loop.read_text()

    loop.write_text('"""Another docstring."""\n# a comment\n' + text.split('"""', 2)[2])
    assert _code_digest(root) == base  # what the code says about itself changes no bits

    loop.write_text(text.replace("def fit(", "_CHANGED = 1\n\n\ndef fit(", 1))
    run_code, pretrain_code = _code_digest(root).split()
    assert run_code != base.split()[0] and pretrain_code != base.split()[1]

    loop.write_text(text)
    tracking = root / "glsim" / "tracking" / "mlflow.py"
    tracking.write_text(tracking.read_text() + "\n_TRACKING_ONLY = 1\n")
    assert _code_digest(root) == base  # tracking changes no weights

    synthetic = root / "glsim" / "data" / "synthetic.py"
    synthetic.write_text(synthetic.read_text() + "\n_UPSTREAM = 1\n")
    run_code, pretrain_code = _code_digest(root).split()
    # fine-tuning sees generated data through its shards (their content is in its key);
    # pretraining generates its data itself
    assert run_code == base.split()[0] and pretrain_code != base.split()[1]


def test_a_run_resumes_only_with_the_world_size_it_started_with(tmp_path):
    from glsim.train.checkpoint import save_checkpoint
    from glsim.train.loop import TrainState

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = tmp_path / "last.pt"
    extra = {"run_key": "k", "world_size": 2}
    save_checkpoint(ckpt, model=model, optimizer=optimizer, scaler=None,
                    state=TrainState(epoch=1, step=3), extra=extra)  # fmt: skip
    with pytest.raises(RunError, match=r"started with 2 process\(es\).*--nproc_per_node 2"):
        resume_or_start(ckpt, "k", model, optimizer, None, world_size=1)
    assert resume_or_start(ckpt, "k", model, optimizer, None, world_size=2).epoch == 1


def test_aggregate_refuses_a_report_of_another_key(tmp_path):
    params = tiny_params(tmp_path, protocol={"models": ["vit"], "seeds": [1], "lr_grid": []},
                         ablations={"variants": {}, "tables": {}})  # fmt: skip
    spec = final_spec(params, "vit", 1)
    report = {"dataset": params.data.dataset, "model": "vit", "seed": 1, "lr": spec.lr,
              "top1": 50.0}  # fmt: skip
    atomic_write_json(spec.report_path(params), {**report, "run_key": runs.run_key(params, spec)})
    aggregate_reports(params, track=False)
    stale = {**report, "run_key": "0123456789abcdef"}
    atomic_write_json(spec.report_path(params), stale)
    with pytest.raises(RunError, match=r"seed1\.json: computed for run key 0123456789abcdef"):
        aggregate_reports(params, track=False)
