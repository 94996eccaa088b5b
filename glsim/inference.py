"""``glsim predict``: classify a user's own images with a trained run.

A run folder (``runs/<dataset>/<model>/seed<S>``, ``runs/<dataset>/ablation/<variant>/seed<S>``
or ``runs/<dataset>/lrsearch/<model>/lr<LR>/seed<S>``) holds ``params.resolved.yaml``; the
model is built and loaded from it with :func:`glsim.train.run.load_run` (an MLflow
``runs:/<id>/model`` or ``models:/<name>@<alias>`` URI: ``mlflow.pytorch.load_model``, the
class names logged with the model and the run's logged ``params.resolved.yaml``), and images are
preprocessed as the run's evaluation does (its ``image_size``/``resize_ratio``, the
backbone's own normalisation). Any image Pillow reads is accepted: grayscale, palette,
RGBA, CMYK, 16-bit, EXIF-rotated, tiny or huge (decoded at a bounded size). A file that is
not a readable image is named on stderr and the others are still classified.

Not imported by any DVC stage.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glsim.errors import CommandError
from glsim.progress import progress as make_bar
from glsim.progress import write as write_line

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
RESOLVED_NAME = "params.resolved.yaml"
MAX_SIDE_FACTOR = 4  # decode at most 4x the resize target on the short side


# ---------------------------------------------------------------------------------------
# the run


@dataclass
class Predictor:
    model: Any
    transform: Any
    class_names: list[str]
    device: Any
    resize: int  # the eval transform's square resize side
    params: Any  # the run's resolved params (glsim.config.Params); None for a bare timm ViT
    crop_tokens: int = 8  # O, the tokens a crop box encloses (the run's model.glsim.top_k)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _head_width(checkpoint: Path) -> int:
    from glsim.train.checkpoint import read_checkpoint

    state = read_checkpoint(checkpoint).get("model", {})
    widths = {v.shape[0] for k, v in state.items() if k.endswith("head.weight") and v.ndim == 2}
    if len(widths) != 1:
        raise CommandError(
            f"{checkpoint}: cannot tell the class count (no shard index, and head widths "
            f"{sorted(widths)}); restore the dataset's shards folder"
        )
    return widths.pop()


def load_predictor(model_path: str | Path, *, device: str | None = None) -> Predictor:
    """Build and load the trained model of a run folder or MLflow URI, with its eval
    preprocessing."""
    from glsim.config import load_params
    from glsim.data.shards import ShardError
    from glsim.models.registry import check_model_name
    from glsim.runs import spec_of_run_dir
    from glsim.train.checkpoint import CHECKPOINT_NAME, require_checkpoint
    from glsim.train.run import load_run, num_classes

    text = str(model_path)
    if text.startswith(("models:/", "runs:/")):
        model, params, names = _load_mlflow(text)
        if names is not None:
            return _predictor(model, params, len(names), device, names)
        return _predictor(model, params, _class_count(params, model), device)
    run_dir = Path(model_path)
    if run_dir.is_file():  # a checkpoint inside a run folder
        run_dir = run_dir.parent
    if not run_dir.is_dir():
        raise CommandError(f"--model {run_dir}: no such run folder")
    resolved = run_dir / RESOLVED_NAME
    if not resolved.is_file():
        raise CommandError(
            f"--model {run_dir}: no {RESOLVED_NAME} there; give a trained run folder "
            "(runs/<dataset>/<model>/seed<S>)"
        )
    params = load_params(resolved)
    spec, runs_root = spec_of_run_dir(run_dir.resolve(), params)
    check_model_name(spec.model)
    # the folder may have moved since training; the pretrained weights are superseded by
    # the checkpoint, so they are not read
    params = params.with_overrides(
        {"base.runs_dir": str(runs_root), "model.backbone.weights": None},
        source=f"{resolved} (predict)",
    )
    require_checkpoint(run_dir / CHECKPOINT_NAME)
    try:
        model, _ = load_run(params, spec)
        count = num_classes(params)
    except ShardError:  # the dataset's shards are not here: the checkpoint says the width
        count = _head_width(run_dir / CHECKPOINT_NAME)
        model = _load_without_shards(params, spec, count)
    return _predictor(model, params, count, device)


def _predictor(
    model, params, count: int, device: str | None, class_names: list[str] | None = None
) -> Predictor:
    """The predictor of a loaded model; its ``class_names``, else the run's shards' names."""
    from glsim.data.shards import read_class_names
    from glsim.eval.evaluate import eval_transform
    from glsim.runs import shards_dir
    from glsim.utils import resolve_device

    classes = class_names or read_class_names(shards_dir(params), count)
    transform = eval_transform(params, model)
    dev = resolve_device(device or params.base.device)
    model.eval().to(dev)
    resize = int(params.data.image_size * params.data.resize_ratio)
    return Predictor(model, transform, classes, dev, resize, params, params.model.glsim.top_k)


def _class_count(params, model) -> int:
    from glsim.data.shards import ShardError
    from glsim.train.run import num_classes

    try:
        return num_classes(params)
    except ShardError:
        heads = [
            m for n, m in model.named_modules() if n.endswith("head") and hasattr(m, "out_features")
        ]
        if not heads:
            raise CommandError(
                "cannot tell the model's class count (no shard index, no head)"
            ) from None
        return int(heads[-1].out_features)


def _load_mlflow(uri: str):
    """The logged model of an MLflow ``runs:/<id>/model`` or ``models:/<name>@<alias>`` (or
    ``models:/<name>/<version>``), the run's ``params.resolved.yaml`` artifact, and the class
    names logged with the model (None for a model logged without them: the shards' then)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from glsim.config import load_params
    from glsim.tracking.mlflow import logged_class_names, tracking_uri

    store = tracking_uri()
    if store.startswith(("http://", "https://")):
        # a server that does not answer is one line, not MLflow's minutes of retries ending
        # in urllib3's connection-pool text
        from glsim.errors import TrackingUnavailable
        from glsim.tracking.mlflow import check_tracking

        try:
            check_tracking(store)
        except TrackingUnavailable as err:
            raise CommandError(f"--model {uri}: is the tracking server up? {err}") from None
    mlflow.set_tracking_uri(store)
    client = mlflow.MlflowClient(store)
    try:
        if uri.startswith("runs:/"):
            run_id = uri[len("runs:/") :].split("/", 1)[0]
        else:
            ref = uri[len("models:/") :]
            if "@" in ref:
                name, alias = ref.split("@", 1)
                run_id = client.get_model_version_by_alias(name, alias).run_id
            else:
                name, _, version = ref.partition("/")
                if not version.isdigit():
                    raise CommandError(
                        f"--model {uri}: give models:/<name>@<alias> or models:/<name>/<version>"
                    )
                run_id = client.get_model_version(name, version).run_id
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=RESOLVED_NAME, tracking_uri=store
        )
        model = mlflow.pytorch.load_model(uri, map_location="cpu")
        names = logged_class_names(uri)
    except MlflowException as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CommandError(f"--model {uri}: {first} (tracking store {store})") from None
    params = load_params(local).with_overrides(
        {"model.backbone.weights": None}, source=f"{uri} {RESOLVED_NAME}"
    )
    return model, params, names


def _load_without_shards(params, spec, count: int):
    from glsim.models import create_model
    from glsim.train.loop import load_trained
    from glsim.train.run import model_kwargs

    model = create_model(
        spec.model,
        num_classes=count,
        image_size=params.data.image_size,
        **model_kwargs(params, spec.model),
    )
    load_trained(model, spec.run_dir(params))
    return model


# ---------------------------------------------------------------------------------------
# images


def collect_images(inputs: list[str]) -> tuple[list[Path], bool]:
    """Files named directly (whatever their suffix) and image files under named folders.

    Returns the paths and whether a folder was given (for the progress bar). A path that
    does not exist is kept: loading it reports it.
    """
    paths: list[Path] = []
    folder = False
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            folder = True
            paths += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            paths.append(path)
    return paths, folder


def load_image(path: Path, resize: int) -> np.ndarray:
    """uint8 RGB (H, W, 3), upright (EXIF), decoded with its short side at most
    ``MAX_SIDE_FACTOR * resize`` (memory stays bounded for very large files)."""
    from PIL import Image, ImageOps

    bound = MAX_SIDE_FACTOR * resize
    with Image.open(path) as im:
        w, h = im.size
        if min(w, h) > bound:  # JPEG decodes at 1/2, 1/4, 1/8 scale, never below the request
            scale = bound / min(w, h)
            im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        im.load()
        im = ImageOps.exif_transpose(im)
        if min(im.size) > bound:
            scale = bound / min(im.size)
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        return to_rgb(im)


def to_rgb(im) -> np.ndarray:
    """Any Pillow mode as uint8 RGB: 16/32-bit and float scaled to 8 bits, transparency
    composited on white, CMYK/palette/grayscale converted."""
    from PIL import Image

    mode = im.mode
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if mode == "F":
            top = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
        else:
            top = 65535.0 if mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
        arr = np.clip(np.nan_to_num(arr) / top * 255.0, 0, 255).round().astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------------------------------
# prediction


def batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def read_batch(predictor: Predictor, paths: list[Path]):
    """``(images, ok, failed)``: the readable ``paths`` preprocessed as the run's evaluation
    does, stacked (B, 3, S, S) on the predictor's device (``None`` if none is readable), the
    paths they came from, and ``{path: why it failed}`` for the others."""
    import torch

    tensors, ok, failed = [], [], {}
    for path in paths:
        try:
            image = load_image(path, predictor.resize)
            tensors.append(predictor.transform(image=image)["image"])
            ok.append(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, not fatal
            failed[path] = _reason(err)
    images = torch.stack(tensors).to(predictor.device) if tensors else None
    return images, ok, failed


def top_predictions(logits, class_names: list[str], top_k: int) -> list[list[dict]]:
    """Per row of ``logits`` (B, C): the ``top_k`` classes as ``{class, label, prob}``."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1).cpu()
    top = probs.topk(max(1, min(top_k, probs.shape[-1])), dim=-1)
    return [
        [
            {"class": int(i), "label": class_names[int(i)], "prob": float(v)}
            for v, i in zip(values, indices, strict=True)
        ]
        for values, indices in zip(top.values, top.indices, strict=True)
    ]


def predict_batch(
    predictor: Predictor, images, paths: list[Path], *, top_k: int
) -> dict[Path, list[dict]]:
    """The ``top_k`` classes of each preprocessed image (B, 3, S, S) by the path it came
    from (``{}`` when ``images`` is None: none of the batch was readable)."""
    import torch

    if images is None:
        return {}
    with torch.inference_mode():
        out = predictor.model(images)
    logits = getattr(out, "logits", out)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return dict(zip(paths, top_predictions(logits, predictor.class_names, top_k), strict=True))


class ImagePass:
    """One command's pass over the user's images (``glsim predict``, ``glsim explain``): the
    image files named or under named folders, read in batches as the run's evaluation does
    (:meth:`batches`), a progress bar while the pass is entered (``with``) when a folder was
    walked, and each unreadable file named on stderr (exit status 1).

    Raises:
        CommandError: no image file under ``inputs``.
    """

    def __init__(self, inputs: list[str]) -> None:
        self.paths, self.folder = collect_images(inputs)
        if not self.paths:
            raise CommandError(f"no image files under {', '.join(inputs)}")
        self.failures = 0
        self.progress = None

    def __enter__(self) -> ImagePass:
        self.progress = progress_bar(len(self.paths), self.folder)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.close()

    def batches(self, predictor: Predictor, batch_size: int) -> Iterator[tuple]:
        """Per batch of paths: ``(images, ok)``, the readable ones preprocessed (B, 3, S, S)
        and their paths (:func:`read_batch`), once each unreadable one of the batch has been
        named and counted; a batch of which none is readable yields nothing. The bar
        advances once the caller is done with the batch."""
        for chunk in batches(self.paths, batch_size):
            images, ok, failed = read_batch(predictor, chunk)
            for path in chunk:
                if path in failed:
                    self.failures += 1
                    report_failure(f"{path}: {failed[path]}", self.progress)
            if images is not None:
                yield images, ok
            if self.progress is not None:
                self.progress.update(len(chunk))

    @property
    def exit_status(self) -> int:
        return 1 if self.failures else 0


def report_failure(line: str, progress=None) -> None:
    """One line on stderr naming a file that could not be read (above a progress bar)."""
    write_line(line, progress)


def progress_bar(total: int, folder: bool):
    """A bar (:func:`glsim.progress.progress`) over ``total`` images when a folder was
    walked and bars are on (a terminal, or ``GLSIM_PROGRESS=1``), else None."""
    return make_bar(total=total, unit="img", disable=not folder)


def _reason(err: Exception) -> str:
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, IsADirectoryError):
        return "is a directory"
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"not a readable image ({text})"


def cmd_predict(args: argparse.Namespace) -> int:
    if args.top_k < 1 or args.batch_size < 1:
        raise CommandError("--top-k and --batch-size must be at least 1")
    images = ImagePass(args.inputs)
    predictor = load_predictor(args.model, device=args.device)
    rows = []
    with images:
        for batch, ok in images.batches(predictor, args.batch_size):
            results = predict_batch(predictor, batch, ok, top_k=args.top_k)
            for path in ok:
                if args.json:
                    rows.append({"path": str(path), "predictions": results[path]})
                else:
                    print(str(path))
                    for p in results[path]:
                        print(f"  {p['label']} (p={p['prob']:.3f})")
    if args.json:
        print(json.dumps(rows, indent=2))
    return images.exit_status


def add_image_command(
    subparsers, name: str, *, help: str, description: str, model_help: str, func
) -> argparse.ArgumentParser:
    """The parser of a command over images and a model (``predict``, ``explain``): the
    inputs and ``--model``; the caller adds its own options."""
    p = subparsers.add_parser(name, help=help, description=description)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--model", required=True, help=model_help)
    p.set_defaults(func=func)
    return p


def add_predict_command(subparsers) -> None:
    p = add_image_command(
        subparsers,
        "predict",
        help="classify images with a trained run",
        description=(
            "Classify images (files, or folders walked for image files) with a trained run "
            "folder; preprocessing comes from the run's own params."
        ),
        model_help="a run folder (runs/<dataset>/<model>/seed<S>) or an MLflow URI "
        "(runs:/<id>/model, models:/<name>@<alias>)",
        func=cmd_predict,
    )
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="a JSON list instead of text")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default: the run's)")
