"""glsim/eval/tables.py: per-seed aggregation, ranking marks, relative error reduction and the
Table-4 renderings, all on numbers worked out by hand."""

from __future__ import annotations

import json
import math

import pytest

from glsim.eval.tables import (
    aggregate,
    load_reports,
    rank_marks,
    relative_error_reduction,
    render_table,
)


def report(dataset: str, model: str, seed: int, top1: float, lr: float = 0.01) -> dict:
    return {"dataset": dataset, "model": model, "seed": seed, "top1": top1, "lr": lr}


# ---------------------------------------------------------------------------------------
# aggregate


def test_aggregate_mean_and_sample_std_three_seeds():
    # mean = 273.5 / 3 = 91.16667; squared deviations 1.36111 + 0.02778 + 1.77778 = 3.16667;
    # sample variance 3.16667 / 2 = 1.58333; std = 1.25831
    tree = aggregate(
        [
            report("cub", "vit", 100, 92.5),
            report("cub", "vit", 1, 90.0),
            report("cub", "vit", 10, 91.0),
        ]
    )
    entry = tree["cub"]["vit"]
    assert entry["top1_mean"] == 91.1667
    assert entry["top1_std"] == 1.2583
    assert entry["lr"] == 0.01
    assert list(entry["seeds"]) == ["1", "10", "100"]  # numeric order, not input or string order
    assert entry["seeds"] == {"1": 90.0, "10": 91.0, "100": 92.5}


def test_aggregate_std_uses_ddof_1():
    # 80 and 82: population std would be 1.0; sample std is sqrt(2)
    tree = aggregate([report("pets", "glsim", 1, 80.0), report("pets", "glsim", 10, 82.0)])
    assert tree["pets"]["glsim"]["top1_mean"] == 81.0
    assert tree["pets"]["glsim"]["top1_std"] == round(math.sqrt(2), 4)


def test_aggregate_one_seed_has_zero_std():
    tree = aggregate([report("dogs", "vit", 1, 91.36)])
    assert tree["dogs"]["vit"]["top1_mean"] == 91.36
    assert tree["dogs"]["vit"]["top1_std"] == 0.0


def test_aggregate_groups_by_dataset_and_model():
    tree = aggregate(
        [
            report("cub", "vit", 1, 90.0),
            report("cub", "glsim", 1, 91.0),
            report("dogs", "vit", 1, 80.0),
        ]
    )
    assert {d: sorted(m) for d, m in tree.items()} == {"cub": ["glsim", "vit"], "dogs": ["vit"]}


def test_aggregate_duplicate_seed_is_an_error():
    with pytest.raises(ValueError, match="cub/vit seed 10"):
        aggregate(
            [
                report("cub", "vit", 10, 90.0),
                report("cub", "glsim", 10, 90.0),
                report("cub", "vit", 10, 91.0),
            ]
        )


def test_aggregate_duplicate_seed_int_vs_str():
    with pytest.raises(ValueError, match="seed 1"):
        aggregate([report("cub", "vit", 1, 90.0), report("cub", "vit", "1", 91.0)])


# ---------------------------------------------------------------------------------------
# rank_marks


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"a": 90.0, "b": 91.0, "c": 89.0}, {"b": "best", "a": "second"}),
        ({"a": 91.0, "b": 91.0, "c": 90.0}, {"a": "best", "b": "best", "c": "second"}),
        ({"a": 91.0, "b": 90.0, "c": 90.0, "d": 80.0}, {"a": "best", "b": "second", "c": "second"}),
        ({"a": 5.0, "b": 5.0}, {"a": "best", "b": "best"}),
        ({"a": 70.0}, {"a": "best"}),
        ({}, {}),
    ],
)
def test_rank_marks(values, expected):
    assert rank_marks(values) == expected


# ---------------------------------------------------------------------------------------
# relative_error_reduction


def test_relative_error_reduction_cub_example():
    # ViT 90.11 -> error 9.89; GLSim 90.93 -> error 9.07; (9.89 - 9.07) / 9.89 = 8.2912 %
    assert relative_error_reduction(90.93, 90.11) == pytest.approx(100 * 0.82 / 9.89)
    assert relative_error_reduction(90.93, 90.11) == pytest.approx(8.2912, abs=1e-4)


def test_relative_error_reduction_signs_and_edges():
    assert relative_error_reduction(80.0, 80.0) == 0.0
    assert relative_error_reduction(100.0, 80.0) == pytest.approx(100.0)  # every error removed
    assert relative_error_reduction(89.0, 90.0) == pytest.approx(-10.0)  # error 11 vs 10
    assert relative_error_reduction(95.0, 100.0) == 0.0  # a perfect baseline: nothing to reduce


# ---------------------------------------------------------------------------------------
# render_table

# cub: glsim best, vit second; dogs: cal missing. Averages: vit (90.11 + 91.37) / 2 = 90.74,
# glsim (90.93 + 92.01) / 2 = 91.47, cal not in every dataset -> "-".
# Rel. error reduction of glsim: errors 9.26 vs 8.53 -> 0.73 / 9.26 = 7.88 %.
RESULTS = {
    "dogs": {
        "vit": {"top1_mean": 91.37, "top1_std": 0.05},
        "glsim": {"top1_mean": 92.01, "top1_std": 0.09},
    },
    "cub": {
        "vit": {"top1_mean": 90.11, "top1_std": 0.17},
        "glsim": {"top1_mean": 90.93, "top1_std": 0.24},
        "cal": {"top1_mean": 88.44, "top1_std": 0.25},
    },
}
MODELS = ["vit", "glsim", "cal"]


def test_render_markdown():
    assert render_table(RESULTS, MODELS).splitlines() == [
        "| Dataset | vit | glsim | cal |",
        "|---|---|---|---|",
        "| cub | <u>90.11 ± 0.17</u> | **90.93 ± 0.24** | 88.44 ± 0.25 |",
        "| dogs | <u>91.37 ± 0.05</u> | **92.01 ± 0.09** | - |",
        "| Average | <u>90.74</u> | **91.47** | - |",
        "| Rel. error reduction vs vit (%) | 0.00 | 7.88 | - |",
    ]


def test_render_latex():
    assert render_table(RESULTS, MODELS, fmt="latex").splitlines() == [
        "\\begin{tabular}{lccc}",
        "\\toprule",
        "Dataset & vit & glsim & cal \\\\",
        "\\midrule",
        "cub & \\underline{90.11 $\\pm$ 0.17} & \\textbf{90.93 $\\pm$ 0.24} & 88.44 $\\pm$ 0.25 \\\\",
        "dogs & \\underline{91.37 $\\pm$ 0.05} & \\textbf{92.01 $\\pm$ 0.09} & - \\\\",
        "Average & \\underline{90.74} & \\textbf{91.47} & - \\\\",
        "Rel. error reduction vs vit (\\%) & 0.00 & 7.88 & - \\\\",
        "\\bottomrule",
        "\\end{tabular}",
    ]


def test_render_latex_escapes_underscores():
    results = {
        "nabirds_555": {
            "vit_cls": {"top1_mean": 80.0, "top1_std": 0.0},
            "vit": {"top1_mean": 79.0, "top1_std": 0.0},
        }
    }
    text = render_table(results, ["vit", "vit_cls"], fmt="latex")
    assert "Dataset & vit & vit\\_cls \\\\" in text
    assert (
        "nabirds\\_555 & \\underline{79.00 $\\pm$ 0.00} & \\textbf{80.00 $\\pm$ 0.00} \\\\" in text
    )


def test_render_default_model_order_and_no_baseline_row():
    text = render_table(RESULTS, baseline="resnet")
    assert text.splitlines()[0] == "| Dataset | cal | glsim | vit |"
    assert "Rel. error reduction" not in text
    assert "| Average | - | **91.47** | <u>90.74</u> |" in text


def test_render_ties_share_bold():
    results = {
        "moe": {
            "ffvt": {"top1_mean": 96.67, "top1_std": 0.15},
            "glsim": {"top1_mean": 96.67, "top1_std": 0.16},
        }
    }
    row = render_table(results, ["ffvt", "glsim"]).splitlines()[2]
    assert row == "| moe | **96.67 ± 0.15** | **96.67 ± 0.16** |"


def test_render_table_from_aggregate():
    tree = aggregate(
        [report("cub", "vit", s, a) for s, a in [(1, 90.0), (10, 92.0)]]
        + [report("cub", "glsim", 1, 93.0)]
    )
    lines = render_table(tree, ["vit", "glsim"]).splitlines()
    assert lines[2] == "| cub | <u>91.00 ± 1.41</u> | **93.00 ± 0.00** |"
    # errors 9 vs 7 -> 2 / 9 = 22.22 %
    assert lines[4] == "| Rel. error reduction vs vit (%) | 0.00 | 22.22 |"


def test_render_unknown_format():
    with pytest.raises(ValueError, match="unknown table format 'html'"):
        render_table(RESULTS, MODELS, fmt="html")


# ---------------------------------------------------------------------------------------
# load_reports


def test_load_reports(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report("cub", "vit", 1, 90.0)))
    assert load_reports([path]) == [report("cub", "vit", 1, 90.0)]
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_reports([tmp_path / "missing.json"])
