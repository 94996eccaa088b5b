"""One tiny pretrain -> fine-tune -> evaluate in a fresh process (started by
tests/test_reproducibility.py): prints one JSON line with a digest of every weight tensor
and the metrics, so two processes can be compared bit for bit.

Usage: ``python tests/repro_run.py DATA_ROOT OUT_DIR NUM_THREADS``; DATA_ROOT holds the
prepared and sharded tiny dataset (``tiny_params(DATA_ROOT)``).
"""

from __future__ import annotations

# ruff: noqa: I001  (glsim before torch, as in a stage script)

import glsim  # noqa: F401  (sets the MKL/OpenMP switches before torch loads)

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from tiny import tiny_params

from glsim.protocol import evaluate_run
from glsim.runs import RunSpec
from glsim.train.pretrain import pretrain_backbone
from glsim.train.run import train_run


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(data_root: str, out_dir: str, num_threads: str) -> None:
    root, out = Path(data_root), Path(out_dir)
    params = tiny_params(
        root,
        base={"runs_dir": str(out / "runs"), "reports_dir": str(out / "reports"),
              "num_threads": int(num_threads)},
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
