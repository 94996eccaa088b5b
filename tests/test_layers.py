"""Imports point one way: config -> nothing of glsim; models -> nothing but torch/timm;
data -> config; train -> models, data, tracking; eval -> models, data; the protocol layer
-> train, eval, tracking; stage scripts and flows -> protocol. Each layer is imported in a
fresh interpreter and the modules it must not load are checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LAYERS = ("glsim.data", "glsim.models", "glsim.train", "glsim.eval", "glsim.tracking",
          "glsim.validation", "glsim.protocol", "glsim.runs", "glsim.config")  # fmt: skip

# module imported -> modules (prefixes) it must not load
RULES = {
    "glsim.config": ["torch", "timm", "mlflow", "glsim.models.registry",
                     *[m for m in LAYERS if m not in ("glsim.config", "glsim.models")]],
    "glsim.runs": ["torch", "timm", "mlflow", "glsim.data", "glsim.models.registry",
                   "glsim.train", "glsim.eval", "glsim.protocol", "glsim.tracking"],
    "glsim.models.registry": ["glsim.config", "glsim.runs", "glsim.data", "glsim.train",
                              "glsim.eval", "glsim.protocol", "glsim.tracking", "mlflow"],
    "glsim.models.choices": ["torch", "timm", "glsim.models.registry"],
    "glsim.data.registry": ["glsim.models", "glsim.train", "glsim.eval", "glsim.protocol",
                            "glsim.tracking", "mlflow"],
    "glsim.data.loader": ["glsim.models", "glsim.train", "glsim.eval", "glsim.protocol",
                          "glsim.tracking", "mlflow"],
    "glsim.train.run": ["glsim.eval", "glsim.protocol", "glsim.validation"],
    "glsim.train.pretrain": ["glsim.eval", "glsim.protocol", "glsim.validation"],
    "glsim.eval.evaluate": ["glsim.train", "glsim.protocol", "glsim.tracking", "mlflow"],
    "glsim.eval.report": ["glsim.train", "glsim.protocol", "glsim.tracking", "mlflow"],
    "glsim.eval.localisation": ["glsim.train", "glsim.protocol", "glsim.tracking", "mlflow"],
    # the `glsim` command imports it for `glsim ledger check`: JSON in, no torch
    "glsim.eval.ledger_check": ["torch", "glsim.train", "glsim.protocol", "glsim.tracking",
                                "mlflow"],
    "glsim.tracking.mlflow": [m for m in LAYERS if m != "glsim.tracking"] + ["torch"],
    "glsim.validation.stage": ["glsim.train", "glsim.eval", "glsim.protocol", "glsim.models"],
    # the `glsim` command imports it for its subcommands; measuring loads torch, not parsing
    "glsim.cost": ["torch", "timm", "mlflow", "glsim.train", "glsim.protocol"],
    "glsim.plan": ["torch", "timm", "mlflow", "glsim.train", "glsim.protocol"],
}  # fmt: skip


# what every layer may load: config and the models' torch-free choice types it imports
CONFIG_LEVEL = {"glsim.models", "glsim.models.choices"}


def test_config_loads_only_the_models_torch_free_choice_types():
    mine = {m for m in loaded_after_import("glsim.config") if m.startswith("glsim")}
    assert mine == {"glsim", "glsim.config", "glsim.models", "glsim.models.choices"}


def loaded_after_import(module: str) -> set[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", sorted(RULES))
def test_a_layer_loads_nothing_above_it(module):
    loaded = loaded_after_import(module)
    bad = sorted(
        m
        for m in loaded - CONFIG_LEVEL
        for prefix in RULES[module]
        if m == prefix or m.startswith(prefix + ".")
    )
    assert not bad, f"importing {module} loads {bad}"
