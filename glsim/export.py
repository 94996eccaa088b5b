"""``glsim export onnx``: a trained run as one ONNX file, checked against PyTorch.

The run (a folder or an MLflow URI) is loaded as ``glsim predict`` loads it
(:func:`glsim.inference.load_predictor`) and exported with ``torch.onnx.export``'s default
exporter in torch 2.14, the ``torch.export``-based one (``dynamo=True``). GLSim is exported
whole: both encoder passes, GLS, the top-O box and the batched ``grid_sample`` crop are
ONNX nodes (``TopK``, ``GridSample``), so the crop follows each input; the graph has a
second output, ``boxes`` (B, 4) int64, beside ``logits`` (B, C). The batch axis is dynamic.

Every op exports (``grid_sample``, ``topk`` included). ``torch.export`` refuses a Python
branch on a tensor value; GLSim's one such branch, the non-empty-box check of
:func:`glsim.models.gls.crop_and_resize`, is skipped while torch compiles or exports (the
boxes of :func:`~glsim.models.gls.crop_boxes` are never empty), so the graph is the
model's own ``forward_explain`` (:class:`GLSimGraph` only picks its two outputs).

The older TorchScript exporter (``dynamo=False``) exports this model too, but it is
deprecated, and as a tracer it would freeze any such branch without a word.

The file is written only once its logits match PyTorch's within ``--atol`` on random
inputs (batch 3 and 1, from the one file) and on real images: the ``--check-images``, else
the run's first test images when its shards are here. Not imported by any DVC stage.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from glsim.errors import CommandError, ExportMismatch

if TYPE_CHECKING:
    from glsim.models.glsim import GLSim

DEFAULT_OPSET = 18
# torch 2.14's exporter builds opset 18 graphs and lowers them with ONNX's version converter,
# which fails on their Reduce nodes (axes as an input since 18) and then keeps 18
MIN_OPSET = 18
DEFAULT_ATOL = 1e-4
SHARD_IMAGES = 4  # test images checked when the run's shards are here


# ---------------------------------------------------------------------------------------
# the graph


def is_glsim(model: nn.Module) -> bool:
    from glsim.models.glsim import GLSim  # not at import: ``glsim --help`` stays quick

    return isinstance(model, GLSim)


class GLSimGraph(nn.Module):
    """GLSim's forward pass (:meth:`GLSim.forward_explain`) as ``images -> (logits, boxes)``.
    Export-only."""

    def __init__(self, model: GLSim) -> None:
        super().__init__()
        if model.selector == "random":
            raise CommandError(
                "a GLSim run with selector=random crops at random: its ONNX output cannot "
                "match PyTorch's; export a gls, attention or rollout run"
            )
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model.forward_explain(images)
        return out.logits, out.boxes  # (B, C), (B, 4)


def export_onnx(model: nn.Module, out: str | Path, *, image_size: int, opset: int) -> list[str]:
    """Export an eval-mode CPU ``model`` to ``out`` with a dynamic batch axis; returns the
    graph's output names (``logits``, and ``boxes`` for GLSim)."""
    if is_glsim(model):
        graph, names = GLSimGraph(model), ["logits", "boxes"]
    else:
        graph, names = model, ["logits"]
    example = torch.randn(2, 3, image_size, image_size)  # batch 2: torch.export keeps it symbolic
    batch = torch.export.Dim("batch", min=1)
    try:
        torch.onnx.export(
            graph.eval(),
            (example,),
            str(out),
            input_names=["images"],
            output_names=names,
            dynamic_shapes={"images": {0: batch}},
            opset_version=opset,
            dynamo=True,
            external_data=False,  # one file (ONNX's protobuf limit: 2 GB, ViT-B is 0.35 GB)
            verbose=False,
        )
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds; say which model
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CommandError(f"cannot export {type(model).__name__} to ONNX: {first}") from err
    written = written_opset(out)
    if written != opset:
        raise CommandError(f"--opset {opset}: the exporter wrote opset {written}; ask for that")
    return names


def written_opset(path: str | Path) -> int:
    """The default-domain opset of an ONNX file."""
    import onnx

    imports = onnx.load(str(path), load_external_data=False).opset_import
    return next(i.version for i in imports if i.domain in ("", "ai.onnx"))


# ---------------------------------------------------------------------------------------
# parity


@dataclass
class Parity:
    inputs: str  # what was checked, for the report
    count: int
    max_abs_diff: float  # max |ONNX - PyTorch| over the logits
    boxes_equal: int | None = None  # samples whose GLSim box matches exactly (None: no boxes)


def onnx_session(path: str | Path):
    """An onnxruntime CPU session of the file at ``path``."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_parity(model: nn.Module, session, images: Tensor, inputs: str) -> Parity:
    """Run ``images`` (B, 3, S, S) through PyTorch and the onnxruntime ``session``; compare
    the outputs."""
    outputs = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        if is_glsim(model):
            out = model.forward_explain(images)
            logits, boxes = out.logits.numpy(), out.boxes.numpy()
        else:
            logits, boxes = model(images).numpy(), None
    diff = float(np.abs(outputs[0] - logits).max())
    same = None if boxes is None else int((outputs[1] == boxes).all(-1).sum())
    return Parity(inputs, len(images), diff, same)


def shard_images(predictor, count: int) -> Tensor | None:
    """The first ``count`` test images of the run's shards in its eval preprocessing, or
    ``None`` when the shards are not here."""
    from glsim.data.loader import make_loader
    from glsim.data.shards import ShardError
    from glsim.runs import shards_dir

    shards = shards_dir(predictor.params)
    if not (shards / "index.json").is_file():
        return None
    loader = make_loader(
        shards, "test", transform=predictor.transform, batch_size=count,
        shuffle=False, seed=0, epoch=0, workers=0,
    )  # fmt: skip
    try:
        images, _ = next(iter(loader))
    except (StopIteration, ShardError):
        return None
    return images


def file_images(predictor, inputs: list[str]) -> Tensor:
    """``--check-images`` (files or folders) in the run's eval preprocessing."""
    from glsim.inference import collect_images, load_image

    paths, _ = collect_images(inputs)
    if not paths:
        raise CommandError(f"--check-images: no image files under {', '.join(inputs)}")
    tensors = []
    for path in paths:
        try:
            image = load_image(path, predictor.resize)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise CommandError(f"--check-images {path}: not a readable image ({err})") from None
        tensors.append(predictor.transform(image=image)["image"])
    return torch.stack(tensors)


def parity_inputs(predictor, check_images: list[str] | None) -> list[tuple[str, Tensor]]:
    """Random batches of 3 and 1 (one file, two batch sizes), then real images: the given
    ones, else the run's first test images when its shards are here."""
    size = predictor.params.data.image_size
    generator = torch.Generator().manual_seed(0)
    sets = [(f"random {b}", torch.randn(b, 3, size, size, generator=generator)) for b in (3, 1)]
    if check_images:
        sets.append(("--check-images", file_images(predictor, check_images)))
    else:
        images = shard_images(predictor, SHARD_IMAGES)
        if images is not None:
            sets.append(("test images", images))
    return sets


# ---------------------------------------------------------------------------------------
# the command


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from glsim.inference import load_predictor
    from glsim.utils import atomic_write_with

    if args.atol < 0:
        raise CommandError(f"--atol {args.atol}: give a tolerance of 0 or more")
    if args.opset < MIN_OPSET:
        raise CommandError(
            f"--opset {args.opset}: torch's exporter writes opset {MIN_OPSET} or later; "
            f"give --opset {MIN_OPSET} or more"
        )
    out = Path(args.out)
    predictor = load_predictor(args.model, device="cpu")
    model = predictor.model
    sets = parity_inputs(predictor, args.check_images)
    results: list[Parity] = []

    def export_and_check(path: Path) -> None:
        export_onnx(model, path, image_size=predictor.params.data.image_size, opset=args.opset)
        session = onnx_session(path)
        results.extend(check_parity(model, session, images, name) for name, images in sets)
        worst = max(results, key=lambda r: np.nan_to_num(r.max_abs_diff, nan=np.inf))
        if not worst.max_abs_diff <= args.atol:  # NaN fails too
            raise ExportMismatch(
                f"ONNX and PyTorch logits differ by {worst.max_abs_diff:.3g} (max abs, on "
                f"{worst.inputs} inputs) > --atol {args.atol:g}; {out} not written"
            )

    atomic_write_with(out, export_and_check)
    worst = max(r.max_abs_diff for r in results)
    print(
        f"{out}: {type(model).__name__} from {args.model}, opset {args.opset}, dynamic batch, "
        f"{out.stat().st_size / 1e6:.1f} MB"
    )
    for r in results:
        boxes = "" if r.boxes_equal is None else f", boxes equal {r.boxes_equal}/{r.count}"
        print(f"  {r.inputs} ({r.count}): max |logit diff| {r.max_abs_diff:.3g}{boxes}")
    print(f"max abs logit difference {worst:.3g} (atol {args.atol:g})")
    return 0


def add_export_commands(subparsers) -> None:
    export = subparsers.add_parser("export", help="export a trained run to another format")
    sub = export.add_subparsers(dest="export_command", required=True)
    p = sub.add_parser(
        "onnx",
        help="a trained run as an ONNX file, checked against PyTorch",
        description=(
            "Export a trained run (GLSim with its GLS crop inside the graph, or any other "
            "model's logits) to ONNX with a dynamic batch axis; the file is written only if "
            "onnxruntime's logits match PyTorch's within --atol."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="a run folder (runs/<dataset>/<model>/seed<S>) or an MLflow URI "
        "(runs:/<id>/model, models:/<name>@<alias>)",
    )
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"default {DEFAULT_OPSET}")
    p.add_argument(
        "--atol",
        type=float,
        default=DEFAULT_ATOL,
        help=f"largest accepted max abs logit difference (default {DEFAULT_ATOL:g})",
    )
    p.add_argument(
        "--check-images",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help="real images to check parity on (default: the run's first test images, when "
        "its shards are here), beside random inputs",
    )
    p.set_defaults(func=cmd_export_onnx)
