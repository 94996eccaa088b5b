"""Imports point one way: config -> nothing of glsim; models -> nothing but torch/timm;
data -> config; train -> models, data, tracking; eval -> models, data; the protocol layer
-> train, eval, tracking; stage scripts and flows -> protocol. Each layer is imported in a
fresh interpreter and the modules it must not load are checked.

The stage scripts (``pipelines/``) and the flows (``flows/``) import, of glsim, only
``glsim`` itself (its import sets the telemetry switches), ``glsim.errors`` (the errors
every entry point reports alike) and ``glsim.protocol``'s submodules, the params API among
them (:mod:`glsim.protocol.entry`). Read from their source (every ``import``, also inside
functions), not by running them."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from glsim.codebase import module_file

ROOT = Path(__file__).resolve().parents[1]
ENTRY_FOLDERS = ("pipelines", "flows")
ENTRY_MAY_IMPORT = ("glsim", "glsim.errors")  # and glsim.protocol.*

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
    "glsim.eval.curve": ["glsim.train", "glsim.protocol", "glsim.tracking", "mlflow"],
    "glsim.tracking.mlflow": [m for m in LAYERS if m != "glsim.tracking"] + ["torch"],
    "glsim.validation.stage": ["glsim.train", "glsim.eval", "glsim.protocol", "glsim.models"],
    # the `glsim` command imports it for its subcommands; measuring loads torch, not parsing
    "glsim.cost": ["torch", "timm", "mlflow", "glsim.train", "glsim.protocol"],
    "glsim.protocol.entry": ["torch", "timm", "mlflow", "glsim.train", "glsim.eval",
                             "glsim.data", "glsim.protocol.specs"],
    "glsim.protocol.specs": ["torch", "timm", "mlflow", "glsim.train", "glsim.eval",
                             "glsim.data"],
    "glsim.protocol.plan": ["torch", "timm", "mlflow", "glsim.train", "glsim.protocol.specs"],
}  # fmt: skip


# what every layer may load: config and the models' torch-free choice types it imports
CONFIG_LEVEL = {"glsim.models", "glsim.models.choices"}


def loaded_after_import(module: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``module``."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    """``loaded_after_import`` of every module the rules name, one interpreter each, as many
    at a time as there are cores (an import is one thread's work)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(RULES, pool.map(loaded_after_import, RULES), strict=True))


def test_config_loads_only_the_models_torch_free_choice_types(loaded):
    mine = {m for m in loaded["glsim.config"] if m.startswith("glsim")}
    assert mine == {"glsim", "glsim.config", "glsim.models", "glsim.models.choices"}


@pytest.mark.parametrize("module", sorted(RULES))
def test_a_layer_loads_nothing_above_it(module, loaded):
    bad = sorted(
        m
        for m in loaded[module] - CONFIG_LEVEL
        for prefix in RULES[module]
        if m == prefix or m.startswith(prefix + ".")
    )
    assert not bad, f"importing {module} loads {bad}"


def test_the_protocol_package_loads_none_of_its_submodules():
    """Each stage depends on the protocol modules it imports, not on all of them."""
    loaded = loaded_after_import("glsim.protocol")
    assert not sorted(m for m in loaded if m.startswith("glsim.protocol."))
    assert "torch" not in loaded


def glsim_imports(path: Path) -> list[tuple[int, str]]:
    """Every glsim module ``path`` imports (line, module), wherever the import stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:  # from glsim.protocol import specs: the submodule named
                sub = f"{node.module}.{a.name}"
                found.append((node.lineno, sub if module_file(sub) else node.module))
    return [(line, m) for line, m in found if m == "glsim" or m.startswith("glsim.")]


def allowed_in_entry_points(module: str) -> bool:
    return module in ENTRY_MAY_IMPORT or module.startswith("glsim.protocol.")


ENTRY_FILES = sorted(f for folder in ENTRY_FOLDERS for f in (ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("path", ENTRY_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_stage_scripts_and_flows_import_only_the_protocol(path):
    bad = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for line, module in glsim_imports(path)
        if not allowed_in_entry_points(module)
    ]
    assert not bad, (
        "a stage script or flow imports glsim past the protocol layer (allowed: "
        f"{', '.join(ENTRY_MAY_IMPORT)}, glsim.protocol.*):\n  " + "\n  ".join(bad)
    )


def test_the_import_reader_sees_imports_inside_functions(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(
        "import glsim\nfrom glsim.protocol.train import train_final\n\n"
        "def main():\n    from glsim.train.run import train_run\n    from glsim import runs\n"
    )
    assert [(line, m) for line, m in glsim_imports(script) if not allowed_in_entry_points(m)] == [
        (5, "glsim.train.run"), (6, "glsim.runs"),
    ]  # fmt: skip
