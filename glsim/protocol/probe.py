"""The ``probe`` stage: where the pretrained backbone's GLS and CLS-attention boxes land on
the test split before fine-tuning, against the shuffled-box baseline, and its explanation
grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glsim import runs
from glsim.config import Params
from glsim.eval.evaluate import eval_loader
from glsim.protocol.evaluate import EXPLAINED_IMAGES
from glsim.train.run import num_classes
from glsim.utils import atomic_write_json, set_threads


def probe(params: Params) -> dict[str, Any]:
    """Where the pretrained backbone's GLS and CLS-attention boxes land on the test split
    before fine-tuning, against the shuffled-box baseline; written to the probe report."""
    from glsim.eval.localisation import probe_backbone
    from glsim.numerics import check_profile

    check_profile(params.base.numerics)
    set_threads(params.base.num_threads)  # the probe runs on the CPU; its rates depend on it
    report = probe_backbone(params)
    write_probe_explanations(params)
    atomic_write_json(runs.probe_report(params), report)
    return report


def write_probe_explanations(params: Params) -> Path | None:
    """The pretrained backbone's explanation grid (:func:`glsim.explain.write_grid` of the
    encoder alone: GLS needs no trained parameter) on the first test images."""
    from glsim.data.shards import read_class_names
    from glsim.explain import EncoderOnly, write_grid
    from glsim.models.backbone import create_vit

    bb, d = params.model.backbone, params.data
    vit = create_vit(bb.name, image_size=d.image_size, weights=bb.weights, **bb.overrides).eval()
    shards = runs.shard_source(params)
    images, labels, _ = next(iter(eval_loader(params, vit, shards)))
    n = min(EXPLAINED_IMAGES, images.shape[0])
    return write_grid(
        EncoderOnly(vit), images[:n], runs.probe_explain(params),
        class_names=read_class_names(shards, num_classes(params)),
        crop_tokens=params.model.glsim.top_k, labels=labels[:n].tolist(),
        title=f"{params.data.dataset}: pretrained backbone, before fine-tuning",
    )  # fmt: skip
