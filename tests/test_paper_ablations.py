"""configs/paper-ablations.yaml is a valid `ablations:` section and its tables render."""

from pathlib import Path

import yaml

from glsim.config import Params, load_params
from glsim.eval.report import ablation_table
from glsim.protocol.specs import variant_params

ROOT = Path(__file__).resolve().parents[1]


def test_paper_ablations_config_validates_and_every_variant_resolves():
    section = yaml.safe_load((ROOT / "configs/paper-ablations.yaml").read_text())
    params = load_params(ROOT / "params.yaml", {"ablations": section["ablations"]})
    assert {"table5", "table11", "table12", "table13", "table14", "table15"} <= set(params.ablations.tables)
    for name in params.ablations.variants:
        resolved = variant_params(params, name)
        assert isinstance(resolved, Params)
    assert variant_params(params, "glsim_o4").model.glsim.top_k == 4
    assert variant_params(params, "vit_minimal").train.augreg == "minimal"
    assert variant_params(params, "glsim_patch16").model.backbone.overrides["patch_size"] == 16
    # the base params are untouched by resolving a variant
    assert params.model.glsim.top_k == 8


def test_ablation_table_renders_mean_std_and_missing_cells():
    section = yaml.safe_load((ROOT / "configs/paper-ablations.yaml").read_text())
    params = load_params(ROOT / "params.yaml", {"ablations": section["ablations"]})
    runs = {"vit": {"top1_mean": 80.0, "top1_std": 1.0}, "glsim_o4": {"top1_mean": 82.5, "top1_std": 0.25}}
    text = ablation_table(params.ablations.tables["table13"], runs, "synthetic_fg")
    assert "| GLSim | 82.50 ± 0.25 | - | - | - |" in text
    assert text.startswith("### Table 13")
