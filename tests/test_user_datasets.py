"""Data shaped like a researcher's own: many classes, an image folder and a CSV named in
``data.datasets``, labels that are wrong in the ways real lists are wrong, and the errors a
user can cause, each one readable line with nothing half-written.

The end-to-end test runs the stage scripts themselves (as ``dvc repro`` does), in-process
to keep the suite fast; the error tests run them as subprocesses where the exit status and
stderr are what a user sees.
"""

from __future__ import annotations

import errno
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from tiny import tiny_params, write_csv_dataset, write_imagefolder

from glsim.config import ParamsError, for_dataset, params_from_dict
from glsim.data.registry import DatasetError, dataset_dir, default_name, prepare_dataset
from glsim.data.shards import ShardError, read_index, write_shards
from glsim.errors import guarded
from glsim.train.run import build

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"


def user_params(tmp_path: Path, datasets: dict, **train) -> Path:
    """A params file for the stage scripts: tiny model, no LR search, the given datasets."""
    tree = tiny_params(tmp_path).model_dump(mode="json")
    tree["data"]["datasets"] = datasets
    tree["data"]["dataset"] = next(iter(datasets))
    tree["protocol"].update({"lr_grid": [], "seeds": [1]})
    tree["train"].update({"epochs": 1, "batch_size": 16, **train})
    tree["ablations"] = {"variants": {}, "tables": {}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def stage(name: str, params: Path, *args: str) -> int:
    """Run ``pipelines/<name>.py`` in this process, as DVC would run it; return its exit code."""
    argv, path = sys.argv, list(sys.path)
    sys.argv = [str(PIPELINES / f"{name}.py"), "--params", str(params), *args]
    sys.path.insert(0, str(PIPELINES))
    try:
        runpy.run_path(str(PIPELINES / f"{name}.py"), run_name="__main__")
    except SystemExit as done:
        return int(done.code or 0)
    finally:
        sys.argv, sys.path[:] = argv, path
    return 0


def cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def head_width(checkpoint: Path) -> int:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    heads = [v for k, v in state.items() if k.endswith("head.weight")]
    assert heads, sorted(state)[:10]
    return heads[-1].shape[0]


# ---------------------------------------------------------------------------------------
# many classes, end to end


@pytest.mark.integration
def test_forty_class_imagefolder_trains_end_to_end_through_the_stage_scripts(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # a server-less store puts artifacts in ./mlruns
    source = write_imagefolder(tmp_path / "my birds", classes=40)
    params = user_params(tmp_path, {"birds40": {"source": f"imagefolder:{source}"}})
    for name, args in [
        ("prepare", ()), ("shard", ()), ("validate", ()),
        ("lr_search", ("--model", "vit")), ("lr_search", ("--model", "glsim")),
        ("train", ("--model", "vit", "--seed", "1")), ("train", ("--model", "glsim", "--seed", "1")),
        ("evaluate", ("--model", "vit", "--seed", "1")), ("evaluate", ("--model", "glsim", "--seed", "1")),
    ]:  # fmt: skip
        assert stage(name, params, "--dataset", "birds40", *args) == 0, (name, args)

    # every folder is the plain name, never the source
    assert (tmp_path / "data/raw/birds40/manifest.csv").is_file()
    shards = tmp_path / "data/shards/birds40"
    assert read_index(shards)["num_classes"] == 40
    assert len(json.loads((shards / "classes.json").read_text())) == 40
    for model in ("vit", "glsim"):
        run = tmp_path / "runs/birds40" / model / "seed1"
        assert head_width(run / "last.pt") == 40
        report = json.loads(
            (tmp_path / f"reports/datasets/birds40/eval/{model}/seed1.json").read_text()
        )
        assert report["count"] == 40 and "per_class" not in report
        table = pd.read_csv(tmp_path / f"reports/datasets/birds40/eval/{model}/seed1_per_class.csv")
        assert table["class_index"].tolist() == list(range(40))
        assert table["count"].sum() == 40
        curve = json.loads((tmp_path / f"reports/plots/curves/birds40/{model}/seed1.json").read_text())
        assert [row["epoch"] for row in curve] == list(range(1, len(curve) + 1)) and curve


def test_a_200_class_csv_gets_a_200_way_head(tmp_path):
    csv = write_csv_dataset(tmp_path / "src", classes=200, train=1, test=1)
    tree = yaml.safe_load(user_params(tmp_path, {"cub_like": {"source": f"csv:{csv}"}}).read_text())
    params = for_dataset(params_from_dict(tree), "cub_like")
    manifest = prepare_dataset(
        params.data.dataset_source, params.data.raw_dir, name="cub_like", params=params
    )
    write_shards(manifest, params.data.shards_dir / "cub_like", max_count=64, max_bytes=1 << 22)
    classes = json.loads((params.data.shards_dir / "cub_like/classes.json").read_text())
    assert len(classes) == 200 and classes[0] == "bird 000" and classes[199] == "bird 199"
    for model in ("vit", "glsim"):
        head = [m for n, m in build(params, model).named_modules() if n.endswith("head")][-1]
        assert head.out_features == 200


# ---------------------------------------------------------------------------------------
# names and folders


def test_a_source_is_not_a_dataset_name_and_the_error_says_how_to_name_it():
    with pytest.raises(ParamsError) as info:
        params_from_dict({"data": {"datasets": {"imagefolder:/data/x": {}}}})
    msg = str(info.value)
    assert "\n" not in msg and "{x: {source: 'imagefolder:/data/x'}}" in msg


def test_a_named_source_resolves_and_keeps_its_overrides():
    params = params_from_dict(
        {"data": {"datasets": {"solar": {"source": "csv:/d/l.csv", "model.glsim.top_k": 4}}}}
    )
    solar = for_dataset(params, "solar")
    assert (solar.data.dataset, solar.data.dataset_source) == ("solar", "csv:/d/l.csv")
    assert solar.model.glsim.top_k == 4
    assert for_dataset(params_from_dict({}), "synthetic_fg").data.dataset_source == "synthetic_fg"


def test_two_csv_files_with_the_same_stem_never_share_a_folder(tmp_path):
    a = write_csv_dataset(tmp_path / "a", classes=3, names=False)
    b = write_csv_dataset(tmp_path / "b", classes=4, names=False)
    assert default_name(f"csv:{a}") != default_name(f"csv:{b}")
    raw = tmp_path / "raw"
    ma = prepare_dataset(f"csv:{a}", raw)
    mb = prepare_dataset(f"csv:{b}", raw)
    assert ma.parent != mb.parent
    assert pd.read_csv(ma)["label"].nunique() == 3 and pd.read_csv(mb)["label"].nunique() == 4
    # the same name for another source is refused, and the first dataset is untouched
    before = ma.read_bytes()
    with pytest.raises(DatasetError, match=rf"prepared from csv:{a}, not csv:{b}"):
        prepare_dataset(f"csv:{b}", raw, name=ma.parent.name)
    assert ma.read_bytes() == before
    with pytest.raises(DatasetError, match="is a source, not a dataset name"):
        dataset_dir(f"csv:{a}", raw)


def test_cli_prepares_a_user_csv_under_a_plain_name(tmp_path, capsys):
    from glsim.cli import main

    csv = write_csv_dataset(tmp_path / "src", classes=3)
    assert main(["data", "prepare", f"csv:{csv}", "--root", str(tmp_path / "raw")]) == 0
    out = capsys.readouterr().out
    assert default_name(f"csv:{csv}") in out and ":" not in Path(out.split()[0]).parent.name
    assert main(["data", "prepare", f"csv:{csv}", "--root", str(tmp_path / "raw"), "--name", "my:x"]) == 2
    assert "not a plain dataset name" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# labels, checked where they are read


def _csv(tmp_path: Path, labels: list, splits: list | None = None) -> Path:
    write_csv_dataset(tmp_path, classes=1, train=len(labels), test=0, names=False)
    table = pd.read_csv(tmp_path / "list.csv")
    table["label"] = labels
    if splits:
        table["split"] = splits
    table.to_csv(tmp_path / "list.csv", index=False)
    return tmp_path / "list.csv"


@pytest.mark.parametrize(
    "labels,splits,fragment",
    [
        ([0, 1, -1, 2], None, r"row 4 has label -1, outside 0\.\.2"),
        ([0, 1, 2, 99], None, r"row 5 has label 99, outside 0\.\.2"),
        ([0, 1, 2, 3, 99], None, r"row 6 has label 99, outside 0\.\.3"),
        ([1, 2, 7, 1], None, r"row 4 has label 7, and no row has label 0"),
        ([0, 1, 2, 3], ["train", "train", "train", "test"], r"class 3 has no train image.*row 5"),
        ([0, 1, "two", 2], None, r"row 4 has label 'two' among integer labels"),
        (["a", "b", "c", "c"], ["train", "train", "test", "test"], r"class 'c' has no train image.*row 4"),
        ([0, 1, None, 2], None, r"row 4 has no label"),
    ],
)
def test_csv_label_errors_name_file_row_value_and_range(tmp_path, labels, splits, fragment):
    csv = _csv(tmp_path, labels, splits)
    with pytest.raises(DatasetError, match=rf"{csv.name}: {fragment}"):
        prepare_dataset(f"csv:{csv}", tmp_path / "raw", name="mine")
    assert not (tmp_path / "raw/mine/manifest.csv").exists()


def test_csv_names_are_names_and_integers_are_integers(tmp_path):
    names = prepare_dataset(f"csv:{_csv(tmp_path / 'n', ['b', 'a', 'b', 'a'])}", tmp_path / "raw", name="n")
    df = pd.read_csv(names)
    assert list(df["class_name"]) == ["b", "a", "b", "a"] and list(df["label"]) == [1, 0, 1, 0]
    ints = prepare_dataset(f"csv:{_csv(tmp_path / 'i', [1, 0, 1, 0])}", tmp_path / "raw", name="i")
    assert list(pd.read_csv(ints, dtype=str)["class_name"]) == ["1", "0", "1", "0"]


def test_csv_missing_image_names_the_row_and_the_csv_not_an_extraction(tmp_path):
    csv = _csv(tmp_path, [0, 1, 0, 1])
    (tmp_path / pd.read_csv(csv)["path"][2]).unlink()
    with pytest.raises(DatasetError, match=rf"row 4\); fix that path in .*{csv.name}") as info:
        prepare_dataset(f"csv:{csv}", tmp_path / "raw", name="mine")
    assert "extracted" not in str(info.value)


def test_imagefolder_empty_or_test_only_class_folder_is_named(tmp_path):
    source = write_imagefolder(tmp_path / "src", classes=3)
    (source / "train" / "empty_class").mkdir()
    with pytest.raises(DatasetError, match=r"class folder .*train/empty_class has no images"):
        prepare_dataset(f"imagefolder:{source}", tmp_path / "raw", name="f")
    (source / "train" / "empty_class").rmdir()
    (source / "test" / "only_in_test").mkdir()
    (source / "train" / "species_000" / "0.png").rename(source / "test" / "only_in_test" / "0.png")
    with pytest.raises(DatasetError, match=r"test/only_in_test has no training folder"):
        prepare_dataset(f"imagefolder:{source}", tmp_path / "raw", name="f")


# ---------------------------------------------------------------------------------------
# errors a user can cause: one line, exit 2, nothing half-written


def test_unknown_model_is_one_line_and_leaves_no_run_folder(tmp_path):
    params = user_params(tmp_path, {"synthetic_fg": {}})
    out = cli("pipelines/train.py", "--params", str(params), "--model", "vitt", "--seed", "1")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: unknown model 'vitt'; did you mean 'vit'? (registered: cal, ffvt, glsim, "
        "resnet101, transfg, vit)"
    ]
    assert not (tmp_path / "runs").exists()
    debug = cli("pipelines/train.py", "--params", str(params), "--model", "vitt", "--seed", "1", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_evaluate_without_a_checkpoint_says_to_train_first(tmp_path):
    params = user_params(tmp_path, {"synthetic_fg": {}})
    out = cli("pipelines/evaluate.py", "--params", str(params), "--model", "vit", "--seed", "1")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "has not been trained yet; run its train stage first" in lines[0]
    assert "delete" not in lines[0]


def test_unknown_model_in_params_does_not_print_the_params_tree(tmp_path):
    from glsim.config import check_params

    with pytest.raises(ParamsError) as info:
        check_params(params_from_dict({"protocol": {"models": ["vit", "vitt"]}}))
    msg = str(info.value)
    assert "\n" not in msg and "unknown model 'vitt'" in msg and "base" not in msg


@pytest.mark.parametrize(
    "code,fragment",
    [
        (errno.ENOSPC, "/data/raw/cub/x.tgz: No space left on device; free disk space"),
        (errno.EACCES, "/data/raw/cub/x.tgz: Permission denied; you may not write"),
    ],
)
def test_disk_full_and_permission_errors_name_the_path(capsys, code, fragment):
    def fail() -> None:
        raise OSError(code, os.strerror(code), "/data/raw/cub/x.tgz")

    assert guarded(fail, debug=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]
    with pytest.raises(OSError):
        guarded(fail, debug=True)


def test_lr_search_with_an_empty_val_part_says_what_to_do_before_training(tmp_path, monkeypatch):
    # one train image per class: the LR search's val part is empty
    from glsim.data.lrsearch import LR_SEARCH_DIR, write_lr_search_shards
    from glsim.protocol.lr_search import search_lr

    source = write_imagefolder(tmp_path / "src", classes=5, train=1, test=1)
    params = tiny_params(tmp_path, data={"datasets": {"few": {"source": f"imagefolder:{source}"}}})
    params = for_dataset(params, "few")
    manifest = prepare_dataset(params.data.dataset_source, params.data.raw_dir, name="few")
    shards = params.data.shards_dir / "few"
    write_shards(manifest, shards, max_count=64, max_bytes=1 << 22)
    write_lr_search_shards(
        manifest, shards / LR_SEARCH_DIR, seed=1, large=False, max_count=64, max_bytes=1 << 22
    )
    monkeypatch.setattr("glsim.protocol.lr_search.train_run", lambda *a, **k: pytest.fail("trained anyway"))
    with pytest.raises(ShardError, match=r"val part is empty.*protocol\.lr_grid: \[\]"):
        search_lr(params, "vit", track=False)
