"""``glsim cost time`` and ``glsim cost bench`` on a tiny ViT at 32 px on the CPU: the rows and
columns they write, the best batch, the plots, accuracy joined from a results.json, and
one ``error:`` line for bad options. No assertion on wall-clock figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from tiny import TINY_VIT

from glsim.cli import main
from glsim.cost.bench import cpu_memory_child, extrapolated, mark_best
from glsim.cost.report import read_accuracies
from glsim.cost.timing import TIMED_DFSMS
from glsim.errors import CommandError

ROOT = Path(__file__).resolve().parents[1]
TINY_TIMM = ["--model", "vit_tiny_patch16_224"] + [
    arg for k, v in TINY_VIT.items() for arg in ("--override", f"{k}={v}")
]
TINY_BACKBONE = ["--set", f"model.backbone.overrides={json.dumps(TINY_VIT)}"]
FAST = ["--repeats", "2", "--warmup", "0", "--min-time", "0"]


def test_time_gives_each_dfsm_a_ratio_to_the_backbone_forward(capsys):
    args = ["cost", "time", *TINY_TIMM, "--image-size", "32", "48", *FAST, "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image_size"] for r in rows] == [32, 48]
    for row in rows:
        assert (row["patch_size"], row["depth"], row["heads"], row["dim"]) == (8, 2, 2, 64)
        assert row["tokens"] == (row["image_size"] // 8) ** 2 + 1
        assert row["psm_tokens"] == ((row["image_size"] - 8) // 4 + 1) ** 2 + 1  # stride P - 4
        assert row["backbone_ms"] > 0
        for name in TIMED_DFSMS:
            assert row[f"{name}_ms"] > 0 and row[f"{name}_ratio"] > 0, name
    assert main(["cost", "time", *TINY_TIMM, "--image-size", "32", *FAST, "--csv"]) == 0
    (row,) = csv.DictReader(capsys.readouterr().out.splitlines())
    assert {"backbone_ms", *(f"{n}_ratio" for n in TIMED_DFSMS)} <= set(row)


def write_results(path: Path) -> Path:
    results = {
        "toy": {
            "vit": {"top1_mean": 61.5, "top1_std": 1.25, "seeds": {"1": 61.5}, "lr": 0.01},
            "ablations": {"vit_cls_block": {"top1_mean": 60.0}},  # not a model: skipped
        },
        "other": {"glsim": {"top1_mean": 99.0, "top1_std": 0.0}},
    }
    path.write_text(json.dumps(results))
    return path


def test_bench_writes_rows_best_batch_plots_and_joins_accuracy(tmp_path, capsys):
    results = write_results(tmp_path / "results.json")
    out = tmp_path / "cost"
    args = [
        "cost", "bench", "--params", str(ROOT / "params.yaml"), *TINY_BACKBONE,
        "--models", "vit", "glsim", "--image-size", "32", "--batch-sizes", "1", "2", *FAST,
        "--device", "cpu", "--out", str(out), "--results", str(results), "--dataset", "toy",
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "glsim_over_vit@32" in printed and "*best" in printed

    rows = list(csv.DictReader((out / "bench.csv").read_text().splitlines()))
    assert [(r["model"], r["batch_size"]) for r in rows] == [
        ("vit", "1"), ("vit", "2"), ("glsim", "1"), ("glsim", "2")
    ]  # fmt: skip
    assert set(rows[0]) == {
        "model", "image_size", "batch_size", "device", "dtype", "threads", "status",
        "images_per_s", "peak_memory_mib", "memory_measure", "best", "top1_mean", "top1_std",
    }  # fmt: skip
    for r in rows:
        assert r["status"] == "ok" and r["memory_measure"] == "cpu_peak_rss_delta"
        assert float(r["images_per_s"]) > 0 and float(r["peak_memory_mib"]) > 0
    for model in ("vit", "glsim"):
        mine = [r for r in rows if r["model"] == model]
        (best,) = [r for r in mine if r["best"] == "True"]
        assert float(best["images_per_s"]) == max(float(r["images_per_s"]) for r in mine)
    # accuracy by model name from the named dataset only; glsim has none in "toy"
    assert {(r["model"], r["top1_mean"], r["top1_std"]) for r in rows} == {
        ("vit", "61.5", "1.25"), ("glsim", "", "")
    }  # fmt: skip

    summary = json.loads((out / "bench.json").read_text())
    assert set(summary["best"]) == {"vit@32", "glsim@32"}
    assert summary["best"]["vit@32"]["top1_mean"] == 61.5
    ratio = summary["ratios"]["glsim_over_vit@32"]
    assert ratio["throughput"] > 0 and ratio["memory"] > 0
    assert summary["device"] == "cpu" and summary["dataset"] == "toy"
    for plot in ("accuracy_vs_throughput.png", "accuracy_vs_memory.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "time.csv").exists()  # the stage's, not the command's


def test_best_batch_is_the_highest_throughput_among_batches_that_ran():
    def row(model, batch, rate, status="ok"):
        return {"model": model, "image_size": 224, "batch_size": batch, "status": status,
                "images_per_s": rate}  # fmt: skip

    rows = mark_best([
        row("vit", 1, 100.0), row("vit", 8, 300.0), row("vit", 32, 250.0),
        row("glsim", 1, 90.0), row("glsim", 8, None, "skipped_memory"),
        row("glsim", 32, None, "skipped_memory"),
        row("cal", 1, None, "oom"),
    ])  # fmt: skip
    assert [(r["model"], r["batch_size"]) for r in rows if r["best"]] == [("vit", 8), ("glsim", 1)]


def test_a_batch_expected_to_pass_the_memory_bound_is_not_run():
    assert extrapolated({}, 8) is None
    assert extrapolated({2: 100}, 8) == 400  # proportional from one point
    assert extrapolated({1: 100, 2: 110}, 8) == 170  # linear from the last two
    kwargs = {"backbone": "vit_tiny_patch16_224", "backbone_overrides": TINY_VIT}
    # in a fresh process, as the bench runs it: in this one, memory freed by earlier tests
    # is reused and a forward may raise the RSS by nothing
    from concurrent.futures import ProcessPoolExecutor

    from glsim.cost.bench import _fresh_processes

    with ProcessPoolExecutor(max_workers=1, mp_context=_fresh_processes()) as pool:
        result = pool.submit(
            cpu_memory_child, "vit", kwargs, num_classes=3, image_size=32,
            batch_sizes=[4, 1, 2], amp=False, threads=0, limit_bytes=1,
        ).result()  # fmt: skip
    assert result.peak_bytes[1] > 0
    assert list(result.peak_bytes) == [1] and result.stopped == {2: "skipped_memory"}


def test_accuracies_are_read_per_dataset(tmp_path):
    path = write_results(tmp_path / "results.json")
    assert read_accuracies(path, "toy") == {"vit": {"top1_mean": 61.5, "top1_std": 1.25}}
    assert read_accuracies(path, "absent") == {}
    with pytest.raises(CommandError, match="has 2 datasets"):
        read_accuracies(path, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["time", *TINY_TIMM, "--image-size", "4"], "--image-size 4"),
        (["time", *TINY_TIMM, "--repeats", "0"], "--repeats 0"),
        (["time", "--model", "resnet50", "--image-size", "32"], "resnet50"),
        (["bench", "--models", "vitt"], "did you mean 'vit'"),
        (["bench", "--repeats", "0"], "cost.repeats"),
        (["bench", "--batch-sizes", "0"], "cost.batch_sizes"),
        (["bench", "--results", "/nonexistent/results.json"], "--results /nonexistent"),
    ],
)
def test_bad_options_give_one_error_line(capsys, args, message):
    if args[0] == "bench":
        args = [*args, "--params", str(ROOT / "params.yaml"), "--device", "cpu"]
    assert main(["cost", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_cuda_without_a_gpu_is_an_error_line(capsys):
    assert main(["cost", "time", *TINY_TIMM, "--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("error: --device is 'cuda'")
