"""``glsim export onnx``: tiny trained GLSim and ViT runs become one ONNX file each whose
logits match PyTorch's at batch 1 and 3, with GLSim's crop box computed inside the graph;
a mismatch is one error line and writes nothing."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from tiny import imagefolder_params

from glsim import export
from glsim.cli import main
from glsim.inference import load_predictor
from glsim.runs import RunSpec
from glsim.train.run import train_run

ATOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Finished one-epoch GLSim and ViT runs on a 3-class image folder (no tracking)."""
    tmp = tmp_path_factory.mktemp("export")
    params = imagefolder_params(tmp, classes=3)
    # a large LR, so that one epoch moves the zero-initialised heads: non-trivial logits
    return {m: train_run(params, RunSpec(m, 1, lr=0.3), track=False) for m in ("glsim", "vit")}


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    """Each run exported once through the command (which checks parity itself)."""
    out = tmp_path_factory.mktemp("onnx")
    files = {}
    for name, run_dir in runs.items():
        files[name] = out / f"{name}.onnx"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(["export", "onnx", "--model", str(run_dir), "--out", str(files[name])])
        assert code == 0
        # the run's shards are here: its test images are checked beside the random inputs
        assert "test images (3): max |logit diff|" in printed.getvalue()
        assert "max abs logit difference" in printed.getvalue()
    return files


def onnx_outputs(path: Path, images: torch.Tensor) -> list[np.ndarray]:
    return export.onnx_session(path).run(None, {"images": images.numpy()})


@pytest.mark.parametrize("name", ["glsim", "vit"])
def test_one_file_matches_pytorch_at_batch_1_and_3(name, runs, exported):
    model = load_predictor(runs[name], device="cpu").model
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        images = torch.randn(batch, 3, 32, 32, generator=generator)
        with torch.no_grad():
            logits = model(images).numpy()
        got = onnx_outputs(exported[name], images)[0]
        assert got.shape == (batch, 3)
        assert np.abs(logits).max() > 1e-3  # the heads moved: the check is not of zeros
        assert np.abs(got - logits).max() < ATOL


def test_the_glsim_crop_is_computed_in_the_graph(runs, exported):
    graph = onnx.load(str(exported["glsim"])).graph
    assert {"TopK", "GridSample"} <= {node.op_type for node in graph.node}
    assert [o.name for o in graph.output] == ["logits", "boxes"]

    model = load_predictor(runs["glsim"], device="cpu").model
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model.forward_explain(images)
    logits, boxes = onnx_outputs(exported["glsim"], images)
    assert len({tuple(b) for b in out.boxes.tolist()}) > 1  # the boxes follow the images
    np.testing.assert_array_equal(boxes, out.boxes.numpy())
    assert np.abs(logits - out.logits.numpy()).max() < ATOL

    # brightening the pixels inside sample 0's box moves the logits, and both alike
    x0, y0, x1, y1 = out.boxes[0].tolist()
    changed = images[:1].clone()
    changed[..., y0:y1, x0:x1] += 2.0
    with torch.no_grad():
        torch_logits = model(changed).numpy()
    onnx_logits = onnx_outputs(exported["glsim"], changed)[0]
    assert np.abs(torch_logits - out.logits[:1].numpy()).max() > 1e-3
    assert np.abs(onnx_logits - torch_logits).max() < ATOL


def test_check_images_are_reported(runs, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(image)
    out = tmp_path / "vit.onnx"
    args = ["export", "onnx", "--model", str(runs["vit"]), "--out", str(out)]
    assert main([*args, "--check-images", str(image)]) == 0
    printed = capsys.readouterr().out
    assert "--check-images (1)" in printed and "random 3 (3)" in printed
    assert "max abs logit difference" in printed and out.is_file()


def test_a_mismatch_is_one_error_line_and_writes_nothing(runs, tmp_path, monkeypatch, capsys):
    real = export.export_onnx

    def export_then_perturb(model, *args, **kwargs):
        names = real(model, *args, **kwargs)
        with torch.no_grad():
            model.head.bias.add_(1.0)  # PyTorch now disagrees with the exported file
        return names

    monkeypatch.setattr(export, "export_onnx", export_then_perturb)
    out = tmp_path / "glsim.onnx"
    assert main(["export", "onnx", "--model", str(runs["glsim"]), "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ONNX and PyTorch logits differ by 1")
    assert "--atol 0.0001" in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_opset_below_18_is_one_error_line(runs, tmp_path, capsys):
    out = tmp_path / "vit.onnx"
    args = ["export", "onnx", "--model", str(runs["vit"]), "--out", str(out), "--opset", "16"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --opset 16: torch's exporter writes opset 18 or later; give --opset 18 or more"
    ]
    assert not out.exists()
