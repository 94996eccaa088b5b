"""A tiny protocol's params file for the flow tests."""

from __future__ import annotations

from pathlib import Path

from tiny import tiny_params

from glsim.config import Params, write_resolved


def write_tiny_params(root: Path, *, pretrained: bool = True, **sections) -> tuple[Path, Params]:
    """A tiny protocol (tests/tiny.py) saved as ``root/params.yaml``, the file a flow and
    its workers read; ``pretrained``: fine-tuning the backbone its pretraining writes (else
    no pretraining, a random backbone)."""
    params = tiny_params(root, **sections)
    if pretrained:
        params.model.backbone.weights = params.pretrain.output
    else:
        params.pretrain.stages = []
    return write_resolved(params, root, "params.yaml"), params
