"""LR-search split: per class 80/20 (20/80 for large datasets), deterministic from the seed."""

from __future__ import annotations

import pandas as pd
import pytest

from glsim.data.splits import lr_search_fraction, lr_search_split, search_train_fraction


def _manifest(per_class: dict[int, int], test_per_class: int = 3) -> pd.DataFrame:
    rows = []
    for label, n in per_class.items():
        rows += [(f"c{label}/img{i:03d}.jpg", label, "train", f"c{label}") for i in range(n)]
        rows += [
            (f"c{label}/test{i:03d}.jpg", label, "test", f"c{label}") for i in range(test_per_class)
        ]
    return pd.DataFrame(rows, columns=["path", "label", "split", "class_name"])


@pytest.mark.parametrize(("large", "n_train"), [(False, 8), (True, 2)])
def test_per_class_fractions(large, n_train):
    out = lr_search_split(_manifest({0: 10, 1: 10, 2: 10}), seed=1, fraction=lr_search_fraction(large))
    assert len(out) == 30 and set(out["split"]) == {"train", "val"}
    assert not out["path"].str.contains("test").any()
    counts = out.groupby("label")["split"].value_counts().unstack()
    assert (counts["train"] == n_train).all()
    assert (counts["val"] == 10 - n_train).all()


def test_deterministic_and_order_independent():
    df = _manifest({0: 20, 1: 15})
    a = lr_search_split(df, seed=7, fraction=0.8)
    b = lr_search_split(df.sample(frac=1, random_state=3), seed=7, fraction=0.8)
    c = lr_search_split(df, seed=8, fraction=0.8)
    key = lambda d: dict(zip(d["path"], d["split"], strict=True))  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(c), "a different seed should pick different images"


def test_small_classes_keep_both_parts():
    out = lr_search_split(_manifest({0: 2, 1: 1, 2: 3}), seed=0, fraction=0.2)
    by = out.groupby("label")["split"].apply(sorted).to_dict()
    assert by[0] == ["train", "val"]
    assert by[1] == ["train"]
    assert by[2] == ["train", "val", "val"]


def test_needs_train_rows():
    df = _manifest({0: 3})
    with pytest.raises(ValueError, match="no 'train' rows"):
        lr_search_split(df[df["split"] == "test"], seed=0, fraction=0.8)


def test_search_train_fraction_is_the_param_else_the_paper_rule():
    assert search_train_fraction(None, large=False, train_images=5_994) == 0.8
    assert search_train_fraction(None, large=True, train_images=10) == 0.2
    assert search_train_fraction(None, large=False, train_images=50_001) == 0.2
    assert search_train_fraction(0.5, large=True, train_images=600_000) == 0.5
    out = lr_search_split(_manifest({0: 10, 1: 10}), seed=1, fraction=0.5)
    assert (out.groupby("label")["split"].value_counts().unstack()["train"] == 5).all()
