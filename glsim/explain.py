"""``glsim explain``: what a ViT looks at, one picture per image (paper Figs. 2, 3, 5).

Per image, side by side: the model input (as its evaluation preprocesses it) with the crop
box; the GLS heatmap, ``cos(x_0, x_i)`` of the last encoder layer's CLS token to each patch
token (Eq. 1-2), with the same box; the crop, resized to the input size as GLSim's second
pass sees it; optionally other feature selection mechanisms' heatmaps (``--dfsm``, Fig. 2);
and the predicted classes.

Nothing is re-derived: scores, box and crop come from the model's own
``forward_explain(images, top_k=O)`` (:class:`glsim.models.output.ModelOutput`; for GLSim
its configured selector and O), the other mechanisms from :mod:`glsim.models.attention`.
``--model`` is a run folder or MLflow URI (loaded and preprocessed as ``glsim predict``
does, :mod:`glsim.inference`), or a timm ViT name with a CLS token: GLS needs no trained
parameter, so any backbone, register tokens included, can be explained, with random or
local ``--weights`` and no classes.

Not imported by any DVC stage.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from glsim.errors import CommandError
from glsim.inference import (
    ImagePass,
    Predictor,
    add_image_command,
    load_predictor,
    top_predictions,
)
from glsim.models.output import ModelOutput

DFSMS = ("rollout", "psm", "maws", "attention")
DFSM_TITLES = {
    "rollout": "attention rollout",
    "psm": "PSM (TransFG)",
    "maws": "MAWS (FFVT)",
    "attention": "last-layer attention",
}
PANEL_INCHES = 2.2
DPI = 100


@dataclass
class Explanation:
    """One image's explanation, every array on the model's input grid."""

    image: np.ndarray  # (S, S, 3) float in [0, 1]: the model input, de-normalised
    heatmap: np.ndarray  # (rows, cols) the model's selector scores on its patch grid
    heatmap_name: str  # "GLS" for GLS with cosine similarity, else the selector's name
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) input pixels, half-open
    crop: np.ndarray  # (S, S, 3) float in [0, 1]: the box resized to the input size
    predictions: list[dict] = field(default_factory=list)  # [{class, label, prob}]; [] if no head
    dfsm: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (rows, cols)
    truth: str = ""  # the true class, when known (the evaluation's grids)


# ---------------------------------------------------------------------------------------
# the model


class EncoderOnly(nn.Module):
    """A timm ViT with no head for any dataset: GLS scores and boxes of its own tokens, and
    logits with no class (B, 0)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward_explain(self, images: Tensor, *, top_k: int | None = None) -> ModelOutput:
        """Logits (B, 0) and, with ``top_k``, the GLS scores and boxes of the encoder."""
        from glsim.models.gls import explain_with_encoder

        no_classes = images.new_zeros(images.shape[0], 0)  # (B, 0)
        return explain_with_encoder(self.encoder, images, no_classes, top_k=top_k)


def load_backbone(
    name: str,
    *,
    image_size: int | None = None,
    weights: str | Path | None = None,
    device: str | None = None,
    **overrides: Any,
) -> Predictor:
    """A timm ViT by name (random weights, or a local ``weights`` file; ``overrides``: its
    constructor arguments) with the evaluation preprocessing of the default params (their
    resize ratio; the backbone's normalisation)."""
    from timm.models import get_pretrained_cfg_value

    from glsim.config import DataParams, GLSimParams
    from glsim.data.transforms import build_transforms
    from glsim.models.backbone import WeightsError, create_vit, pretrained_norm
    from glsim.utils import resolve_device

    size = image_size or int(get_pretrained_cfg_value(name, "input_size")[-1])
    try:
        encoder = create_vit(name, image_size=size, weights=weights, **overrides)
    except WeightsError:
        raise  # names the file; a user error already
    except (ValueError, TypeError) as err:
        raise CommandError(f"--model {name}: {err}") from None
    if encoder.cls_token is None:
        raise CommandError(
            f"--model {name} has no CLS token (global pooling only); GLS compares the CLS "
            "token with the patch tokens, so pick a ViT with one (e.g. vit_base_patch16_224, "
            "vit_small_patch14_reg4_dinov2)"
        )
    mean, std = pretrained_norm(encoder)
    ratio = DataParams.model_fields["resize_ratio"].default
    transform = build_transforms(
        image_size=size, resize_ratio=ratio, train=False, mean=mean, std=std
    )
    dev = resolve_device(device or "auto")
    model = EncoderOnly(encoder).eval().to(dev)
    return Predictor(model, transform, [], dev, int(size * ratio), None, GLSimParams().top_k)


def load_explainer(
    model: str,
    *,
    image_size: int | None = None,
    weights: str | None = None,
    device: str | None = None,
) -> Predictor:
    """A run folder or MLflow URI (:func:`glsim.inference.load_predictor`), else a timm name."""
    if model.startswith(("runs:/", "models:/")) or Path(model).exists():
        if image_size is not None or weights is not None:
            raise CommandError(
                "--image-size and --weights go with a timm model name; a run folder or MLflow "
                "model brings its own"
            )
        return load_predictor(model, device=device)
    import timm

    if not timm.is_model(model):
        raise CommandError(
            f"--model {model}: not a run folder, an MLflow URI (runs:/<id>/model, "
            "models:/<name>@<alias>) or a timm model name (timm.list_models('vit_*'))"
        )
    return load_backbone(model, image_size=image_size, weights=weights, device=device)


def vit_encoder(model: nn.Module) -> nn.Module:
    """The timm ViT a model selects tokens with; a CNN has none to explain."""
    from timm.models.vision_transformer import VisionTransformer

    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, VisionTransformer):
        raise CommandError(
            f"a {type(model).__name__} has no ViT patch grid to explain; give a ViT-based "
            "run (glsim, vit, transfg, ffvt) or a timm ViT name"
        )
    return encoder


def selector_name(model: nn.Module) -> str:
    """What ``forward_explain``'s scores are: GLS, unless a GLSim ablation selects otherwise."""
    selector, metric = getattr(model, "selector", "gls"), getattr(model, "metric", "cosine")
    if selector != "gls":
        return selector
    return "GLS" if metric == "cosine" else f"GLS ({metric})"


# ---------------------------------------------------------------------------------------
# the explanation


@torch.no_grad()
def dfsm_scores(encoder: nn.Module, images: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """Per mechanism in ``names``, its (B, N) patch scores from ``encoder``'s attention.

    ``attention``: the last layer's CLS attention, head mean; ``rollout``: attention rollout
    over all layers; ``psm``: TransFG's product of the first L-1 layers' maps, CLS row,
    head mean (TransFG takes each head's arg-max); ``maws``: FFVT's mutual attention of
    layer L-1, the last one FFVT selects with.
    """
    from glsim.models.attention import (
        attention_rollout,
        cls_attention,
        forward_blocks_with_attention,
        maws_scores,
        psm_scores,
    )

    if not names:
        return {}
    enc, prefix = encoder, encoder.num_prefix_tokens
    x = enc.norm_pre(enc.patch_drop(enc._pos_embed(enc.patch_embed(images))))  # (B, P+N, D)
    _, logits = forward_blocks_with_attention(enc.blocks, x, logits=True)  # L x (B, H, T, T)
    weights = [layer.softmax(dim=-1) for layer in logits]  # L x (B, H, T, T)
    first = weights[:-1] or weights  # the first L-1 layers (all of a one-layer ViT)
    scores = {
        "attention": lambda: cls_attention(weights[-1], num_prefix_tokens=prefix),
        "rollout": lambda: attention_rollout(weights, num_prefix_tokens=prefix),
        "psm": lambda: psm_scores(first, num_prefix_tokens=prefix)[0].mean(dim=1),  # (B, N)
        "maws": lambda: maws_scores(logits[len(first) - 1], num_prefix_tokens=prefix),
    }
    return {name: scores[name]() for name in names}


@torch.no_grad()
def explain_images(
    predictor: Predictor,
    images: Tensor,
    *,
    top_k: int = 3,
    crop_tokens: int | None = None,
    dfsm: Sequence[str] = (),
) -> list[Explanation]:
    """Explain a batch of preprocessed images (B, 3, S, S) with the predictor's model.

    Args:
        predictor: the model, its class names and preprocessing.
        images: model inputs on ``predictor.device``.
        top_k: classes listed per image (none when the model has no head for the dataset).
        crop_tokens: O, the tokens the box encloses (``None``: the run's own).
        dfsm: other mechanisms to show beside GLS, from :data:`DFSMS`.
    """
    from glsim.models.backbone import pretrained_norm
    from glsim.models.gls import crop_and_resize

    model = predictor.model
    encoder = vit_encoder(model)
    rows, cols = encoder.patch_embed.grid_size
    if crop_tokens is not None and not 1 <= crop_tokens <= rows * cols:
        raise CommandError(
            f"--tokens {crop_tokens}: the box encloses 1 to {rows * cols} tokens "
            f"(a {rows}x{cols} patch grid)"
        )
    tokens = crop_tokens or min(predictor.crop_tokens, rows * cols)
    out = model.forward_explain(images, top_k=tokens)
    if out.scores is None or out.boxes is None:
        raise CommandError(f"a {type(model).__name__} returns no patch scores to explain")
    crops = getattr(out, "crops", None)  # GLSim's own; the same cut for the others
    if crops is None:
        crops = crop_and_resize(images, out.boxes, tuple(images.shape[-2:]))  # (B, 3, S, S)
    mean, std = (
        torch.tensor(v, device=images.device)[:, None, None] for v in pretrained_norm(encoder)
    )

    def pictures(batch: Tensor) -> np.ndarray:  # (B, 3, S, S) normalised -> (B, S, S, 3)
        return (batch.float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()

    def grid(scores: Tensor) -> np.ndarray:  # (B, N) -> (B, rows, cols)
        return scores.float().reshape(-1, rows, cols).cpu().numpy()

    predictions = (
        top_predictions(out.logits, predictor.class_names, top_k)
        if out.logits.shape[-1] and predictor.class_names
        else [[] for _ in range(images.shape[0])]
    )
    others = {name: grid(s) for name, s in dfsm_scores(encoder, images, dfsm).items()}
    name = selector_name(model)
    return [
        Explanation(
            image=image,
            heatmap=heatmap,
            heatmap_name=name,
            box=tuple(int(v) for v in box),
            crop=crop,
            predictions=preds,
            dfsm={k: v[i] for k, v in others.items()},
        )
        for i, (image, heatmap, box, crop, preds) in enumerate(
            zip(
                pictures(images),
                grid(out.scores),
                out.boxes.cpu(),
                pictures(crops),
                predictions,
                strict=True,
            )
        )
    ]


# ---------------------------------------------------------------------------------------
# the picture


def panel_titles(explanation: Explanation) -> list[str]:
    """The picture's panels, left to right."""
    titles = ["input + crop box", explanation.heatmap_name, "crop"]
    titles += [DFSM_TITLES[name] for name in explanation.dfsm]
    return titles + (["prediction"] if explanation.predictions else [])


def explanation_figure(explanation: Explanation, *, title: str = ""):
    """One row of panels (:func:`panel_titles`) as a matplotlib ``Figure`` on the Agg canvas
    (no pyplot state)."""
    return explanations_figure([explanation], title=title)


def explanations_figure(explanations: Sequence[Explanation], *, title: str = ""):
    """One row of panels per explanation (all with the same panels), as one ``Figure``: the
    grid the evaluation writes for a run's first test images."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    titles = panel_titles(explanations[0])
    fig = Figure(
        figsize=(PANEL_INCHES * len(titles), (PANEL_INCHES + 0.2) * len(explanations) + 0.3),
        dpi=DPI,
    )
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(explanations), len(titles), squeeze=False)
    for row, (axes, explanation) in enumerate(zip(grid, explanations, strict=True)):
        _draw_row(axes, explanation, titles if row == 0 else None)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _draw_row(axes, explanation: Explanation, titles: list[str] | None) -> None:
    from matplotlib.patches import Rectangle

    image = explanation.image
    height, width = image.shape[:2]
    x0, y0, x1, y1 = explanation.box

    def box(ax) -> None:  # pixel i spans [i - 0.5, i + 0.5] in imshow's coordinates
        ax.add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="lime", lw=2)
        )

    def heat(ax, scores: np.ndarray) -> None:
        ax.imshow(image)
        ax.imshow(
            scores, cmap="jet", alpha=0.5, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
            interpolation="nearest",
        )  # fmt: skip

    panels = iter(axes)
    ax = next(panels)
    ax.imshow(image)
    box(ax)
    ax = next(panels)
    heat(ax, explanation.heatmap)
    box(ax)
    next(panels).imshow(explanation.crop)
    for scores in explanation.dfsm.values():
        heat(next(panels), scores)
    if explanation.predictions:
        ax = next(panels)
        lines = [f"{p['label']}: {p['prob']:.3f}" for p in explanation.predictions]
        if explanation.truth:
            lines.insert(0, f"true: {explanation.truth}")
        ax.text(0.02, 0.98, "\n".join(lines), va="top", ha="left", fontsize=9,
                transform=ax.transAxes)  # fmt: skip
    for i, ax in enumerate(axes):
        if titles:
            ax.set_title(titles[i], fontsize=9)
        ax.set_axis_off()


def write_grid(
    model: nn.Module,
    images: Tensor,
    path: Path,
    *,
    class_names: Sequence[str],
    crop_tokens: int,
    labels: Sequence[int] | None = None,
    title: str = "",
) -> Path | None:
    """The explanation grid of a trained model on a few preprocessed images (B, 3, S, S),
    written atomically to ``path`` (PNG); None, writing nothing, for a model without a ViT
    patch grid (ResNet, CAL). ``labels``: the true classes, named in the row's title line."""
    from glsim.utils import atomic_write_with

    try:
        vit_encoder(model)
    except CommandError:
        return None
    predictor = Predictor(model, None, list(class_names), images.device, 0, None, crop_tokens)
    with torch.no_grad():
        rows = explain_images(predictor, images, top_k=3)
    if labels is not None:
        for row, label in zip(rows, labels, strict=True):
            row.truth = class_names[int(label)]
    fig = explanations_figure(rows, title=title)
    atomic_write_with(path, lambda p: fig.savefig(p, format="png"))
    return path


def output_names(paths: list[Path]) -> dict[Path, str]:
    """``<stem>.png`` per image, ``<stem>-<i>.png`` for a stem seen before."""
    names: dict[Path, str] = {}
    seen: set[str] = set()
    for path in paths:
        name, i = f"{path.stem}.png", 1
        while name in seen:
            name, i = f"{path.stem}-{i}.png", i + 1
        seen.add(name)
        names[path] = name
    return names


# ---------------------------------------------------------------------------------------
# the command


def parse_dfsm(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in DFSMS]
    if unknown:
        raise CommandError(f"--dfsm {','.join(unknown)}: unknown; choose from {','.join(DFSMS)}")
    return list(dict.fromkeys(names))


def cmd_explain(args: argparse.Namespace) -> int:
    sizes = (args.top_k, args.batch_size, args.tokens, args.image_size)
    if any(size is not None and size < 1 for size in sizes):
        raise CommandError("--top-k, --batch-size, --tokens and --image-size must be at least 1")
    dfsm = parse_dfsm(args.dfsm)
    images = ImagePass(args.inputs)
    predictor = load_explainer(
        args.model, image_size=args.image_size, weights=args.weights, device=args.device
    )
    vit_encoder(predictor.model)  # a CNN is refused before any file is written
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = output_names(images.paths)
    with images:
        for batch, ok in images.batches(predictor, args.batch_size):
            explanations = explain_images(
                predictor, batch, top_k=args.top_k, crop_tokens=args.tokens, dfsm=dfsm
            )
            for path, explanation in zip(ok, explanations, strict=True):
                target = out_dir / names[path]
                explanation_figure(explanation, title=path.name).savefig(target)
                print(target)
    return images.exit_status


def add_explain_command(subparsers) -> None:
    p = add_image_command(
        subparsers,
        "explain",
        help="picture what a ViT looks at: GLS heatmap, crop box, crop, prediction",
        description=(
            "Write one PNG per image: the input with the crop box, the global-local "
            "similarity heatmap, the crop, other mechanisms' heatmaps (--dfsm) and the "
            "predicted classes (paper Figs. 2, 3, 5)."
        ),
        model_help="a run folder (runs/<dataset>/<model>/seed<S>), an MLflow URI "
        "(runs:/<id>/model, models:/<name>@<alias>) or a timm ViT name with a CLS token "
        "(no classes then)",
        func=cmd_explain,
    )
    p.add_argument("--out", required=True, help="folder for the PNGs (<image stem>.png)")
    p.add_argument(
        "--dfsm",
        default="",
        help=f"other mechanisms shown beside GLS, comma-separated: {','.join(DFSMS)}",
    )
    p.add_argument("--top-k", type=int, default=3, help="classes shown per image (default 3)")
    p.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="O, the top tokens the crop box encloses (default: the run's model.glsim.top_k)",
    )
    p.add_argument("--image-size", type=int, default=None, help="input side (timm name only)")
    p.add_argument("--weights", default=None, help="local weights file (timm name only)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default: the run's)")
