"""One tiny pretrain -> fine-tune -> evaluate in a fresh process (started by
tests/test_reproducibility.py): prints one JSON line with a digest of every weight tensor
and the metrics, so two processes can be compared bit for bit.

Usage: ``python tests/repro_run.py DATA_ROOT OUT_DIR NUM_THREADS [NUMERICS]``; DATA_ROOT
holds the prepared and sharded tiny dataset (``tiny_params(DATA_ROOT)``); NUMERICS is
``base.numerics`` (default ``native``), applied before torch loads as a stage script does.
"""

from __future__ import annotations

# ruff: noqa: I001, E402  (glsim and the numerics profile before torch, as in a stage script)

import glsim  # noqa: F401  (sets the MKL/OpenMP switches before torch loads)

import sys

from glsim.numerics import apply_profile

NUMERICS = sys.argv[4] if len(sys.argv) > 4 else "native"
apply_profile(NUMERICS)

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from tiny import tiny_params

from glsim.protocol.evaluate import evaluate_run
from glsim.runs import RunSpec
from glsim.train.pretrain import pretrain_backbone
from glsim.train.run import train_run


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(data_root: str, out_dir: str, num_threads: str, numerics: str = "native") -> None:
    root, out = Path(data_root), Path(out_dir)
    params = tiny_params(
        root,
        base={"runs_dir": str(out / "runs"), "reports_dir": str(out / "reports"),
              "num_threads": int(num_threads), "numerics": numerics},
        pretrain={"output": str(out / "backbone.safetensors"), "images_per_epoch": 64},
    )  # fmt: skip
    pretrained = pretrain_backbone(params, work_dir=out / "pretrain")
    params.model.backbone.weights = params.pretrain.output
    spec = RunSpec(model="glsim", seed=1, lr=0.03)
    run_dir = train_run(params, spec, track=False)
    report = evaluate_run(params, spec, track=False)
    finetuned = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "capability": torch.backends.cpu.get_cpu_capability(),
                "backbone": digest(load_file(str(params.pretrain.output))),
                "model": digest(finetuned["model"]),
                "upstream_test_acc": pretrained["upstream_test_acc"],
                "train_loss": [e["train/loss"] for e in finetuned["state"]["history"]],
                "report": {k: v for k, v in report.items() if isinstance(v, (int, float))},
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
