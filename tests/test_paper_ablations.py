"""configs/paper-ablations.yaml is a valid `ablations:` section and its tables render."""

from pathlib import Path

import yaml

from glsim.config import Params, load_params
from glsim.eval.report import ablation_table, crop_zooms
from glsim.protocol.specs import variant_params

ROOT = Path(__file__).resolve().parents[1]


def test_paper_ablations_config_validates_and_every_variant_resolves():
    section = yaml.safe_load((ROOT / "configs/paper-ablations.yaml").read_text())
    params = load_params(ROOT / "params.yaml", {"ablations": section["ablations"]})
    assert {"table5", "table11", "table12", "table13", "table14", "table15"} <= set(
        params.ablations.tables
    )
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
    runs = {
        "vit": {"top1_mean": 80.0, "top1_std": 1.0},
        "glsim_o4": {"top1_mean": 82.5, "top1_std": 0.25},
    }
    text = ablation_table(params.ablations.tables["table13"], runs, "synthetic_fg")
    assert "| GLSim | 82.50 ± 0.25 | - | - | - |" in text
    assert text.startswith("### Table 13")


def test_crop_tables_show_each_runs_zoom_and_other_tables_do_not():
    section = yaml.safe_load((ROOT / "configs/paper-ablations.yaml").read_text())
    params = load_params(ROOT / "params.yaml", {"ablations": section["ablations"]})
    reports = [
        {"dataset": "synthetic_fg", "model": m, "localisation": {"zoom": z}}
        for m, z in [
            ("glsim", 1.5),
            ("glsim", 1.7),
            ("glsim_rollout", 1.2),
            ("vit", 1.6),
            ("glsim_rollout", 1.2),
            ("glsim_random", 1.1),
            ("glsim_random", 1.1),
        ]
    ] + [{"dataset": "other", "model": "glsim_attention", "localisation": {"zoom": 3.0}}]
    cropping = ["glsim", "glsim_rollout", "glsim_random", "glsim_attention"]
    by_dataset = crop_zooms(reports, ["synthetic_fg", "other"], cropping)
    zooms = by_dataset["synthetic_fg"]
    assert zooms == {
        "glsim": [1.5, 1.7], "glsim_rollout": [1.2, 1.2], "glsim_random": [1.1, 1.1],
        "glsim_attention": [],
    }  # fmt: skip
    assert by_dataset["other"] == {
        "glsim": [], "glsim_rollout": [], "glsim_random": [], "glsim_attention": [3.0]
    }  # fmt: skip
    runs = {
        "glsim": {"top1_mean": 72.0, "top1_std": 2.0},
        "glsim_rollout": {"top1_mean": 75.0, "top1_std": 1.0},
        "vit": {"top1_mean": 65.0, "top1_std": 1.5},
    }
    selectors = ablation_table(params.ablations.tables["selectors"], runs, "synthetic_fg", zooms)
    assert (
        "| | GLS | zoom (x) | last-layer CLS attention | zoom (x) | rollout | zoom (x) |"
        in selectors
    )
    # a run with no report yet: accuracy and zoom unknown; random crops: zoom without top-1
    assert (
        "| GLSim | 72.00 ± 2.00 | 1.60 ± 0.14 | - | - | 75.00 ± 1.00 | 1.20 ± 0.00 | - | 1.10 ± 0.00 |"
        in selectors
    )
    # a table with a run that does not crop (ViT's localisation is the GLS box it would crop)
    # gets no zoom columns
    assert "zoom" not in ablation_table(
        params.ablations.tables["table5"], runs, "synthetic_fg", zooms
    )
    assert "zoom" not in ablation_table(params.ablations.tables["selectors"], runs, "synthetic_fg")
