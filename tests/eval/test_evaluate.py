"""The report's metrics and the per-class table, on a CUB-shaped (200-class) prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd

from glsim.eval.evaluate import accuracy_report, per_class_table, write_per_class

CLASSES = 200


def cub_like_predictions() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """3 test images per class but class 199 (none), every class's first image right and
    class c's others right when c is even."""
    labels = np.repeat(np.arange(CLASSES - 1), 3)
    preds = labels.copy()
    wrong = (np.arange(labels.size) % 3 != 0) & (labels % 2 == 1)
    preds[wrong] = (labels[wrong] + 1) % CLASSES
    return labels, preds, [f"{c:03d}.bird {c}" for c in range(CLASSES)]


def test_the_report_keeps_the_metrics_and_no_per_class_entries():
    labels, preds, _ = cub_like_predictions()
    report = accuracy_report(labels, preds, CLASSES)
    assert set(report) == {"top1", "mean_per_class", "count"}  # a handful for dvc exp show
    assert report["count"] == 3 * 199
    assert report["top1"] == round(100.0 * float((labels == preds).mean()), 4)
    # the absent class is left out of the mean: 100 for even classes, 33.33 for odd ones
    even, odd = 100, 99
    expected = (even * 100.0 + odd * round(100.0 / 3, 4)) / 199
    assert report["mean_per_class"] == round(expected, 4)


def test_per_class_table_has_every_class_with_name_count_correct_and_accuracy(tmp_path):
    labels, preds, names = cub_like_predictions()
    table = per_class_table(labels, preds, names)
    assert list(table.columns) == ["class_index", "class_name", "count", "correct", "accuracy"]
    assert table["class_index"].tolist() == list(range(CLASSES))
    assert table.loc[0].tolist() == [0, "000.bird 0", 3, 3, 100.0]
    assert table.loc[1].tolist() == [1, "001.bird 1", 3, 1, 33.3333]
    assert table.loc[199, "count"] == 0 and np.isnan(table.loc[199, "accuracy"])

    path = write_per_class(table, tmp_path / "eval" / "seed1_per_class.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "class_index,class_name,count,correct,accuracy"
    assert len(lines) == 1 + CLASSES and lines[-1] == "199,199.bird 199,0,0,"
    back = pd.read_csv(path)
    assert back["correct"].sum() == int((labels == preds).sum())
    present = back[back["count"] > 0]
    report = accuracy_report(labels, preds, CLASSES)
    assert round(float(present["accuracy"].mean()), 4) == report["mean_per_class"]
