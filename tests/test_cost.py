"""``glsim cost flops``: the paper's Table 1 cells through the command's JSON."""

from __future__ import annotations

import csv
import io
import json

import pytest

from glsim.cli import main
from glsim.models.dfsm import BACKBONE_GFLOPS_224, DFSM_NAMES, TABLE1_PUBLISHED

SIZES = sorted(TABLE1_PUBLISHED)


def printed_percent(mflops: float, backbone_mflops: float) -> float:
    """As the paper prints it (see tests/models/test_dfsm.py): MFLOPs rounded to 4
    decimals, the backbone to 2, the ratio to 4, shown with 5 digits."""
    return float(f"{round(100 * round(mflops, 4) / round(backbone_mflops, 2), 4):.5g}")


def half_unit_of_second_digit(value: float) -> float:
    import math

    return 0.5 * 10 ** (math.floor(math.log10(value)) - 1)


def run_json(capsys, *args: str) -> list[dict]:
    assert main(["cost", "flops", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_table1_cells_through_cost_flops_json(capsys):
    rows = run_json(
        capsys, "--model", "vit_base_patch16_224", "--image-size", *map(str, SIZES)
    )
    assert [r["image_size"] for r in rows] == SIZES
    for row in rows:
        assert row["model"] == "vit_base_patch16_224"
        for name in DFSM_NAMES:
            assert {f"{name}_mflops", f"{name}_pct"} <= set(row)
            mflops, percent = TABLE1_PUBLISHED[row["image_size"]][name]
            ours = row[f"{name}_mflops"]
            assert abs(ours - mflops) <= half_unit_of_second_digit(mflops), (row, name)
            assert printed_percent(ours, row["backbone_mflops"]) == percent, (row, name)
            assert row[f"{name}_pct"] == pytest.approx(100 * ours / row["backbone_mflops"])
    assert round(rows[0]["backbone_mflops"] / 1e3, 2) == BACKBONE_GFLOPS_224


def test_appendix_settings_come_from_the_timm_model(capsys):
    # ViT Ti-16 (Table 8): width 192, 3 heads, read from timm, not typed in
    (row,) = run_json(capsys, "--model", "vit_tiny_patch16_224", "--image-size", "224")
    assert (row["dim"], row["heads"], row["depth"], row["patch_size"]) == (192, 3, 12, 16)
    assert printed_percent(row["psm_mflops"], row["backbone_mflops"]) == 160.36
    assert printed_percent(row["gls_mflops"], row["backbone_mflops"]) == 0.0089


def test_csv_and_text_and_errors(capsys):
    assert main(["cost", "flops", "--image-size", "224", "448", "--csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["image_size"]) for r in table] == [224, 448]
    assert "gls_pct" in table[0] and "backbone_mflops" in table[0]
    assert main(["cost", "flops", "--image-size", "224"]) == 0
    assert "gls" in capsys.readouterr().out
    assert main(["cost", "flops", "--image-size", "8"]) == 2
    assert capsys.readouterr().err.startswith("error: --image-size 8")
    assert main(["cost", "flops", "--model", "resnet50"]) == 2
    assert "not a timm VisionTransformer" in capsys.readouterr().err
