"""``glsim predict``: a tiny trained run classifies images of every real-world kind, names
the files it cannot read, and says so in its exit status."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from tiny import imagefolder_params

from glsim.cli import main
from glsim.inference import MAX_SIDE_FACTOR, load_image
from glsim.runs import RunSpec
from glsim.train.run import train_run

CLASSES = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch GLSim run on a 3-class image folder (no tracking)."""
    tmp = tmp_path_factory.mktemp("predict")
    params = imagefolder_params(tmp, classes=CLASSES)
    return params, train_run(params, RunSpec("glsim", 1, lr=0.01), track=False)


@pytest.fixture(scope="module")
def run_dir(trained) -> Path:
    return trained[1]


def write_images(root: Path) -> dict[str, Path]:
    """One file per kind a user may have; two that are not readable images."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    files: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **kw) -> None:
        files[name] = root / name
        image.save(files[name], **kw)

    save("gray.png", Image.fromarray(rgb[..., 0]))
    save("palette.png", Image.fromarray(rgb).convert("P"))
    rgba = np.dstack([rgb, rng.integers(0, 256, (40, 60), dtype=np.uint8)])
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    save("deep.png", Image.fromarray(rng.integers(0, 65536, (40, 60), dtype=np.uint16)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    save("rotated.jpg", Image.fromarray(rgb), exif=exif)
    save("tiny.png", Image.fromarray(rgb[:4, :4]))
    save("large.jpg", Image.fromarray(np.zeros((2000, 3000, 3), np.uint8) + 90), quality=70)
    files["x.jpg"] = root / "x.jpg"
    files["x.jpg"].write_text("not an image at all\n")
    whole = root / "whole.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    files["truncated.png"] = root / "truncated.png"
    files["truncated.png"].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return files


BAD = ("x.jpg", "truncated.png")


def test_every_image_kind_is_predicted_and_bad_files_are_named(run_dir, tmp_path, capsys):
    files = write_images(tmp_path / "imgs")
    assert files["deep.png"].exists() and Image.open(files["deep.png"]).mode.startswith("I")
    assert Image.open(files["cmyk.jpg"]).mode == "CMYK"

    code = main(["predict", str(tmp_path / "imgs"), "--model", str(run_dir), "--top-k", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    err_lines = [line for line in err.splitlines() if line.strip()]
    assert len(err_lines) == len(BAD), err
    for name in BAD:
        assert any(str(files[name]) in line for line in err_lines), err
    for name, path in files.items():
        assert (str(path) in out) == (name not in BAD), (name, out)
    # class names come from the shards' classes.json
    assert "species_000" in out and ("(p=0." in out or "(p=1." in out)

    # --json over single files, top-k = C: every class, probabilities sum to 1
    good = [str(p) for n, p in files.items() if n not in BAD]
    code = main(
        ["predict", *good, "--model", str(run_dir), "--top-k", str(CLASSES), "--json", "--batch-size", "3"]
    )
    out, err = capsys.readouterr()
    assert code == 0 and err.strip() == ""
    rows = json.loads(out)
    assert [r["path"] for r in rows] == good
    for row in rows:
        preds = row["predictions"]
        assert len(preds) == CLASSES
        assert sorted(p["class"] for p in preds) == list(range(CLASSES))
        assert abs(sum(p["prob"] for p in preds) - 1) < 1e-4
        assert all(p["label"].startswith("species_") for p in preds)


def test_images_are_upright_rgb_and_bounded(tmp_path):
    files = write_images(tmp_path)
    for name, path in files.items():
        if name in BAD:
            with pytest.raises(Exception):  # noqa: B017 - whatever Pillow raises
                load_image(path, 42)
            continue
        image = load_image(path, 42)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
    assert load_image(files["rotated.jpg"], 42).shape[:2] == (60, 40)  # EXIF applied
    large = load_image(files["large.jpg"], 42)
    assert min(large.shape[:2]) <= MAX_SIDE_FACTOR * 42 and large.shape[1] > large.shape[0]
    assert load_image(files["rgba.png"], 42).shape == (40, 60, 3)


def test_a_missing_class_list_falls_back_to_numbers(run_dir, tmp_path, capsys):
    classes = Path(yaml.safe_load((run_dir / "params.resolved.yaml").read_text())["data"]["shards_dir"])
    classes = classes / "mine" / "classes.json"
    kept = classes.read_bytes()
    classes.unlink()
    try:
        image = tmp_path / "a.png"
        Image.new("L", (20, 20), 128).save(image)
        assert main(["predict", str(image), "--model", str(run_dir), "--top-k", "1"]) == 0
        assert "class " in capsys.readouterr().out
    finally:
        classes.write_bytes(kept)


def test_a_folder_that_is_not_a_run_is_one_error_line(tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 20)).save(image)
    assert main(["predict", str(image), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "params.resolved.yaml" in err[0]


def test_predict_from_an_mlflow_runs_uri(trained, tmp_path, monkeypatch, capsys):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # a server-less store puts artifacts in ./mlruns
    params = trained[0].with_overrides({"base.runs_dir": str(tmp_path / "runs")})
    train_run(params, RunSpec("glsim", 1, lr=0.01), track=True)
    capsys.readouterr()  # the training log
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    image = tmp_path / "a.png"
    Image.new("RGB", (30, 20), (200, 10, 10)).save(image)
    uri = f"runs:/{run.info.run_id}/model"
    code = main(["predict", str(image), "--model", uri, "--top-k", "3", "--json"])
    assert code == 0, capsys.readouterr().err
    (row,) = json.loads(capsys.readouterr().out)
    assert abs(sum(p["prob"] for p in row["predictions"]) - 1) < 1e-4
    assert {p["label"] for p in row["predictions"]} == {f"species_{c:03d}" for c in range(3)}
    # the same image from the run folder gives the same answer
    folder = str(tmp_path / "runs/mine/glsim/seed1")
    assert main(["predict", str(image), "--model", folder, "--top-k", "3", "--json"]) == 0
    (folder_row,) = json.loads(capsys.readouterr().out)
    for a, b in zip(row["predictions"], folder_row["predictions"], strict=True):
        assert a["class"] == b["class"] and a["prob"] == pytest.approx(b["prob"], abs=1e-5)
    # an unknown registered model is one error line
    assert main(["predict", str(image), "--model", "models:/nope@champion"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --model models:/nope@champion")
