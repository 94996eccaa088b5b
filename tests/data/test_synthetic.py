import hashlib

import numpy as np
import pandas as pd
import pytest

from glsim.config import SyntheticParams
from glsim.data.registry import get_dataset
from glsim.data.synthetic import generate_fine_grained, markings, upstream_batch, upstream_classes


def small() -> SyntheticParams:
    return SyntheticParams(
        num_classes=4, train_per_class=3, test_per_class=2, canvas_size=48, object_size=(10, 14)
    )


def digest(root) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def test_generation_is_deterministic_and_seed_dependent(tmp_path):
    a = generate_fine_grained(tmp_path / "a", small())
    generate_fine_grained(tmp_path / "b", small())
    generate_fine_grained(tmp_path / "c", small().model_copy(update={"seed": 1}))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    df = pd.read_csv(a)
    assert list(df.columns) == ["path", "label", "split", "class_name", "x0", "y0", "x1", "y1"]
    assert (df.split == "train").sum() == 12 and (df.split == "test").sum() == 8
    assert sorted(df.label.unique()) == [0, 1, 2, 3]


def test_object_box_is_inside_the_central_crop(tmp_path):
    df = pd.read_csv(generate_fine_grained(tmp_path, small()))
    margin = int(np.ceil(48 * (1 - 1 / 1.34) / 2))
    assert (df[["x0", "y0"]] >= margin).all().all()
    assert (df[["x1", "y1"]] <= 48 - margin).all().all()
    side = df.x1 - df.x0
    assert ((side >= 10) & (side <= 14)).all() and (side == df.y1 - df.y0).all()


def test_markings_are_flip_symmetric_distinct_and_not_rotations():
    pats = markings(12)
    for p in pats:
        assert np.array_equal(p, p[:, ::-1])  # horizontal flip keeps the class
    for i, p in enumerate(pats):
        for q in pats[i + 1 :]:
            assert min(np.abs(np.rot90(p, k) - q).sum() for k in range(4)) >= 2
    with pytest.raises(ValueError, match="markings available"):
        markings(64)


def test_marking_is_the_only_class_signal_in_the_target():
    """Two images of different classes from the same random stream differ only inside the marking."""
    from glsim.data.synthetic import fine_grained_image

    pats = markings(2)
    a, box_a = fine_grained_image(np.random.default_rng(5), 0, small(), pats)
    b, box_b = fine_grained_image(np.random.default_rng(5), 1, small(), pats)
    assert box_a == box_b
    diff = np.argwhere((a != b).any(-1))
    x0, y0, x1, y1 = box_a
    assert diff.size and (diff[:, 1] >= x0).all() and (diff[:, 1] < x1).all()
    assert (diff[:, 0] >= y0).all() and (diff[:, 0] < y1).all()


def test_upstream_batch_shapes_and_classes():
    images, labels = upstream_batch([0, 1], 16, num_classes=24, size=32, task="shape_colour")
    assert images.shape == (16, 32, 32, 3) and images.dtype == np.uint8
    assert labels.min() >= 0 and labels.max() < 24
    assert len(set(upstream_classes(24))) == 24
    again, _ = upstream_batch([0, 1], 16, num_classes=24, size=32, task="shape_colour")
    assert np.array_equal(images, again)


def test_registered_with_expected_counts_from_params():
    from glsim.config import Params

    params = Params.model_validate({"data": {"synthetic": small().model_dump()}})
    counts = get_dataset("synthetic_fg").expected_counts(params)
    assert (counts.num_classes, counts.train, counts.test) == (4, 12, 8)


def test_colour_task_labels_are_hue_bins():
    images, labels = upstream_batch([3], 64, num_classes=6, size=48, task="colour")
    assert sorted(set(labels.tolist())) == list(range(6))
    again, labels_again = upstream_batch([3], 64, num_classes=6, size=48, task="colour")
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    with pytest.raises(ValueError, match="unknown upstream task"):
        upstream_batch([3], 1, num_classes=6, size=48, task="texture")
