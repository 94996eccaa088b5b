"""``glsim explain``: the pictured heatmap and box are the model's own, one PNG per readable
image with its panels, register-token backbones, and bad files named in the exit status."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny import TINY_VIT, imagefolder_params

from glsim.cli import main
from glsim.explain import (
    DFSMS,
    EncoderOnly,
    explain_images,
    explanation_figure,
    load_backbone,
    load_explainer,
    panel_titles,
)
from glsim.inference import read_batch
from glsim.models.backbone import pretrained_norm
from glsim.models.gls import crop_boxes, global_local_similarity
from glsim.runs import RunSpec
from glsim.train.run import train_run

CLASSES = 3
PANEL_PX = 220  # explain.PANEL_INCHES * explain.DPI


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Finished one-epoch GLSim and ViT runs on a 3-class image folder (no tracking)."""
    tmp = tmp_path_factory.mktemp("explain")
    params = imagefolder_params(tmp, classes=CLASSES, model={"glsim": {"top_k": 5}})
    return {m: train_run(params, RunSpec(m, 1, lr=0.01), track=False) for m in ("glsim", "vit")}


def write_images(root: Path) -> tuple[list[Path], Path]:
    """RGB, grayscale, RGBA and palette images, and a truncated PNG."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    kinds = {
        "rgb.png": Image.fromarray(rgb),
        "gray.png": Image.fromarray(rgb[..., 0]),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., 1]]), "RGBA"),
        "palette.png": Image.fromarray(rgb).convert("P"),
    }
    for name, image in kinds.items():
        image.save(root / name)
    truncated = root / "truncated.png"
    Image.fromarray(rgb).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    return [root / name for name in kinds], truncated


def batch_of(predictor, root: Path) -> torch.Tensor:
    good, _ = write_images(root)
    images, ok, failed = read_batch(predictor, good)
    assert ok == good and not failed
    return images


def test_glsim_heatmap_box_and_crop_are_the_models_own(runs, tmp_path):
    predictor = load_explainer(str(runs["glsim"]), device="cpu")
    model = predictor.model
    images = batch_of(predictor, tmp_path)
    explanations = explain_images(predictor, images, top_k=2, dfsm=DFSMS)

    with torch.no_grad():  # the model's own first pass, selection and crop
        scores = global_local_similarity(model.encode(images, model.encoder.cls_token))
        boxes, crops = model.crop(images, scores, model.top_k)
    rows, cols = model.grid_size
    mean, std = (torch.tensor(v)[:, None, None] for v in pretrained_norm(model.encoder))
    for i, e in enumerate(explanations):
        assert e.heatmap_name == "GLS" and e.heatmap.shape == (rows, cols)
        np.testing.assert_allclose(e.heatmap, scores[i].reshape(rows, cols).numpy(), atol=1e-6)
        assert e.box == tuple(boxes[i].tolist())
        crop = (crops[i] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(e.crop, crop, atol=1e-6)
        assert e.image.shape == (32, 32, 3) and 0 <= e.image.min() <= e.image.max() <= 1
        assert [p["label"] for p in e.predictions][:1] and len(e.predictions) == 2
        assert all(p["label"].startswith("species_") for p in e.predictions)
        assert list(e.dfsm) == list(DFSMS)
        assert all(m.shape == (rows, cols) and np.isfinite(m).all() for m in e.dfsm.values())

    titles = panel_titles(explanations[0])
    assert titles[:3] == ["input + crop box", "GLS", "crop"] and titles[-1] == "prediction"
    assert len(titles) == 3 + len(DFSMS) + 1
    assert len(explanation_figure(explanations[0]).axes) == len(titles)


def test_vit_run_gls_is_cosine_of_its_last_layer(runs, tmp_path):
    predictor = load_explainer(str(runs["vit"]), device="cpu")
    encoder = predictor.model.encoder
    images = batch_of(predictor, tmp_path)
    (first, *_) = explain_images(predictor, images, top_k=1, crop_tokens=3)

    with torch.no_grad():
        tokens = encoder.forward_features(images)  # (B, 1+N, D)
    cosine = F.cosine_similarity(tokens[:, 1:], tokens[:, :1], dim=-1)  # (B, N)
    box = crop_boxes(cosine, grid_size=4, patch_size=8, top_k=3)[0]
    np.testing.assert_allclose(first.heatmap, cosine[0].reshape(4, 4).numpy(), atol=1e-6)
    assert first.box == tuple(box.tolist()) and len(first.predictions) == 1


def test_register_tokens_are_skipped(tmp_path):
    predictor = load_backbone(
        "vit_small_patch14_reg4_dinov2", image_size=32, device="cpu", **TINY_VIT
    )
    encoder = predictor.model.encoder
    assert isinstance(predictor.model, EncoderOnly) and encoder.num_prefix_tokens == 5
    images = batch_of(predictor, tmp_path)
    explanations = explain_images(predictor, images, crop_tokens=2, dfsm=DFSMS)

    with torch.no_grad():
        tokens = encoder.forward_features(images)  # (B, 1+4+16, D): CLS, registers, patches
    cosine = F.cosine_similarity(tokens[:, 5:], tokens[:, :1], dim=-1)  # (B, 16)
    boxes = crop_boxes(cosine, grid_size=4, patch_size=8, top_k=2)
    for i, e in enumerate(explanations):
        np.testing.assert_allclose(e.heatmap, cosine[i].reshape(4, 4).numpy(), atol=1e-6)
        assert e.box == tuple(boxes[i].tolist())
        assert e.predictions == []  # no head for any dataset
        assert all(m.shape == (4, 4) for m in e.dfsm.values())
    assert len(panel_titles(explanations[0])) == 3 + len(DFSMS)


def test_one_png_per_readable_image_and_bad_files_named(runs, tmp_path, capsys):
    good, truncated = write_images(tmp_path / "imgs")
    out = tmp_path / "out"
    code = main(
        ["explain", str(tmp_path / "imgs"), "--model", str(runs["glsim"]), "--out", str(out),
         "--dfsm", "rollout,maws", "--top-k", "2", "--device", "cpu"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    (err_line,) = [line for line in captured.err.splitlines() if line.strip()]
    assert str(truncated) in err_line and "not a readable image" in err_line
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in good)
    for path in good:
        with Image.open(out / path.name) as png:  # input, GLS, crop, 2 DFSMs, prediction
            assert png.format == "PNG" and png.width == 6 * PANEL_PX

    # a timm name with register tokens, no run: no prediction panel
    code = main(
        ["explain", str(good[0]), "--model", "vit_small_patch14_reg4_dinov2", "--image-size",
         "28", "--tokens", "1", "--out", str(out / "timm"), "--device", "cpu"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with Image.open(out / "timm" / "rgb.png") as png:
        assert png.width == 3 * PANEL_PX
    # O beyond its 2x2 grid is one error line
    args = ["explain", str(good[0]), "--model", "vit_small_patch14_reg4_dinov2", "--image-size",
            "28", "--tokens", "5", "--out", str(out / "timm")]  # fmt: skip
    assert main(args) == 2
    assert "--tokens 5: the box encloses 1 to 4 tokens" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "vit_wee_patch16_reg1_gap_256", "--image-size", "32"], "no CLS token"),
        (["--model", "no_such_model"], "not a run folder"),
        (["--model", "vit_tiny_patch16_224", "--dfsm", "rollout,sacm"], "--dfsm sacm"),
        (["--model", "vit_wee_patch16_reg1_gap_256", "--image-size", "0"], "at least 1"),
    ],
)
def test_unusable_arguments_are_one_error_line(tmp_path, capsys, args, message):
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 20)).save(image)
    assert main(["explain", str(image), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_a_grid_has_one_row_of_the_same_panels_per_explanation():
    import numpy as np

    from glsim.explain import Explanation, explanations_figure

    def one(truth: str) -> Explanation:
        return Explanation(
            image=np.zeros((32, 32, 3)), heatmap=np.zeros((4, 4)), heatmap_name="GLS",
            box=(0, 0, 16, 16), crop=np.zeros((32, 32, 3)),
            predictions=[{"class": 0, "label": "a", "prob": 0.9}], truth=truth,
        )  # fmt: skip

    fig = explanations_figure([one("a"), one("b"), one("c")], title="run")
    assert len(fig.axes) == 3 * 4  # input, GLS, crop, prediction
    assert [ax.get_title() for ax in fig.axes[:4]] == ["input + crop box", "GLS", "crop", "prediction"]
    assert all(ax.get_title() == "" for ax in fig.axes[4:])  # titles on the first row only
    texts = [t.get_text() for ax in fig.axes[3::4] for t in ax.texts]
    assert texts == ["true: a\na: 0.900", "true: b\na: 0.900", "true: c\na: 0.900"]


def test_every_image_kind_predict_reads_is_explained(runs, tmp_path, capsys):
    """The kinds `glsim predict` is tested on (grayscale, palette, RGBA, CMYK, 16-bit,
    EXIF-rotated, smaller than a patch, 3000x2000) each get a picture; a non-image and a
    truncated file are named and the exit status is 1."""
    from test_predict import BAD
    from test_predict import write_images as write_every_kind

    files = write_every_kind(tmp_path / "kinds")
    out = tmp_path / "out"
    code = main(["explain", str(tmp_path / "kinds"), "--model", str(runs["glsim"]),
                 "--out", str(out), "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert all(str(files[bad]) in err for bad in BAD)
    good = sorted(Path(name).stem for name in files if name not in BAD)
    assert sorted(p.stem for p in out.iterdir()) == good
