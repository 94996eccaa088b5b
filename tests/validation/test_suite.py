"""The great-expectations dataset suite: it passes a good dataset and names what breaks a bad one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from glsim.config import ExpectedCounts, Params
from glsim.data.manifest import ManifestError, write_manifest
from glsim.data.shards import write_shards
from glsim.validation import ValidationFailed, ValidationReport, expected_counts, validate_dataset

CLASSES, TRAIN, TEST = 3, 3, 2
GOOD = ExpectedCounts(num_classes=CLASSES, train=CLASSES * TRAIN, test=CLASSES * TEST)

Rows = list[dict]


def make_dataset(
    root: Path, edit: Callable[[Path, Rows], None] | None = None, *, side: int = 24
) -> tuple[Path, Path]:
    """Write PNGs + manifest (``edit`` may change files and rows first), shard it; return (manifest, shards)."""
    rng = np.random.default_rng(0)
    rows: Rows = []
    for label in range(CLASSES):
        for i in range(TRAIN + TEST):
            path = f"images/{label}/{i}.png"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / path)
            rows.append(
                dict(
                    path=path,
                    label=label,
                    split="train" if i < TRAIN else "test",
                    class_name=f"c{label}",
                )
            )
    if edit is not None:
        edit(root, rows)
    manifest = write_manifest(pd.DataFrame(rows), root / "manifest.csv")
    write_shards(manifest, root / "shards", max_count=4, max_bytes=1 << 20)
    return manifest, root / "shards"


def check(
    root: Path, edit=None, expected: ExpectedCounts = GOOD, min_side: int = 16
) -> ValidationReport:
    manifest, shards = make_dataset(root, edit)
    return validate_dataset(manifest, shards, expected, min_side=min_side, raise_on_failure=False)


def only_failure(report: ValidationReport) -> tuple[str, list[dict]]:
    assert not report.success
    assert len(report.failed) == 1, [r.description for r in report.failed]
    return report.failed[0].description, report.failed[0].rows


def test_a_good_dataset_passes_and_the_report_round_trips(tmp_path: Path) -> None:
    manifest, shards = make_dataset(tmp_path)
    report = validate_dataset(
        manifest, shards, GOOD, min_side=16, report_path=tmp_path / "report.json"
    )
    assert report.success and report.offending_rows == []
    assert len(report.results) == 9 and all(r.success for r in report.results)
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["success"] is True and len(written["results"]) == 9
    assert json.loads(report.to_json()) == written


def test_unset_expected_counts_are_not_checked(tmp_path: Path) -> None:
    report = check(tmp_path, expected=ExpectedCounts())
    assert report.success and len(report.results) == 6


def test_wrong_class_count(tmp_path: Path) -> None:
    report = check(tmp_path, expected=GOOD.model_copy(update={"num_classes": 4}))
    failed = {r.description for r in report.failed}
    assert "4 classes" in failed and "every class present in train" in failed
    missing = next(r for r in report.failed if r.description == "every class present in train")
    assert [row["label"] for row in missing.rows] == [3]


def test_wrong_split_size(tmp_path: Path) -> None:
    description, _ = only_failure(check(tmp_path, expected=GOOD.model_copy(update={"test": 7})))
    assert description == "7 test images"


def test_label_out_of_range_is_refused_before_any_shard(tmp_path: Path) -> None:
    # Labels are checked where the manifest is written, so the suite never sees them; the
    # error names the file, row, value and valid range, and no shard exists.
    def relabel(root: Path, rows: Rows) -> None:
        rows[0].update(label=7, class_name="c7")

    with pytest.raises(ManifestError, match=r"manifest\.csv: row 2 has label 7, outside 0\.\.2"):
        make_dataset(tmp_path, relabel)
    assert not (tmp_path / "shards").exists()


def test_class_missing_from_train_is_refused_before_any_shard(tmp_path: Path) -> None:
    def move_class_2_to_test(root: Path, rows: Rows) -> None:
        for row in rows:
            if row["label"] == 2:
                row["split"] = "test"

    with pytest.raises(ManifestError, match=r"class 2 has no train image.*row 12"):
        make_dataset(tmp_path, move_class_2_to_test)
    assert not (tmp_path / "shards").exists()


def test_same_image_in_train_and_test(tmp_path: Path) -> None:
    def duplicate(root: Path, rows: Rows) -> None:
        (root / "images/1/4.png").write_bytes((root / "images/0/1.png").read_bytes())

    description, rows = only_failure(check(tmp_path, duplicate))
    assert description == "no test image in train"
    assert [r["path"] for r in rows] == [str(tmp_path / "images/1/4.png")]
    assert str(tmp_path / "images/0/1.png") in rows[0]["problem"]


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    def corrupt(root: Path, rows: Rows) -> None:
        data = (root / "images/2/0.png").read_bytes()
        (root / "images/2/0.png").write_bytes(data[:60])  # header survives, pixels do not

    description, rows = only_failure(check(tmp_path, corrupt))
    assert description == "every image decodes"
    assert [r["path"] for r in rows] == [str(tmp_path / "images/2/0.png")]
    assert "does not decode" in rows[0]["problem"]


def test_too_small_image_is_named(tmp_path: Path) -> None:
    def shrink(root: Path, rows: Rows) -> None:
        Image.new("RGB", (30, 8)).save(root / "images/1/2.png")

    description, rows = only_failure(check(tmp_path, shrink))
    assert description == "every image's shorter side >= 16 px"
    assert rows == [
        {
            "path": str(tmp_path / "images/1/2.png"),
            "label": 1,
            "split": "train",
            "problem": "image is 30x8, shorter side < 16 px",
        }
    ]


def test_a_bad_image_outside_the_manifest_folder_is_named_by_its_own_path(tmp_path: Path) -> None:
    # a user's folder beside the raw-data root: the manifest says ../../mine/x.png; the
    # report names the file, and the reason has no repr of an in-memory buffer
    def not_an_image(root: Path, rows: Rows) -> None:
        (root / "images/2/0.png").write_bytes(b"this is not an image")

    source = tmp_path / "mine"
    manifest, shards = make_dataset(source, not_an_image)
    moved = tmp_path / "raw" / "ds" / "manifest.csv"
    moved.parent.mkdir(parents=True)
    df = pd.read_csv(manifest)
    df["path"] = "../../mine/" + df["path"]
    write_manifest(df, moved)
    write_shards(moved, tmp_path / "shards2", max_count=4, max_bytes=1 << 20)
    report = validate_dataset(
        moved, tmp_path / "shards2", ExpectedCounts(), min_side=16, raise_on_failure=False
    )
    description, rows = only_failure(report)
    assert description == "every image decodes"
    assert rows[0]["path"] == str(source / "images/2/0.png")
    assert rows[0]["problem"] == "does not decode: not an image format PIL recognises"
    assert "BytesIO" not in report.summary() and "../" not in report.summary()


def test_manifest_changed_after_sharding(tmp_path: Path) -> None:
    manifest, shards = make_dataset(tmp_path)
    df = pd.read_csv(manifest)
    df.loc[0, "split"] = "test"
    write_manifest(df, manifest)
    report = validate_dataset(
        manifest, shards, ExpectedCounts(), min_side=16, raise_on_failure=False
    )
    description, rows = only_failure(report)
    assert description == "every manifest row is in the shards"
    assert rows[0]["path"] == str(tmp_path / "images/0/0.png") and "re-run the shards stage" in rows[0]["problem"]


def test_failure_raises_with_the_expectation_and_rows_and_still_writes_the_report(
    tmp_path: Path,
) -> None:
    manifest, shards = make_dataset(tmp_path)
    with pytest.raises(ValidationFailed) as info:
        validate_dataset(manifest, shards, GOOD, min_side=100, report_path=tmp_path / "report.json")
    message = str(info.value)
    assert "every image's shorter side >= 100 px" in message
    assert (
        "offending rows (15, first 10)" in message and message.count("shorter side < 100 px") == 10
    )
    assert json.loads((tmp_path / "report.json").read_text())["success"] is False
    assert info.value.report.failed[0].unexpected_count == 15


def test_decoding_in_parallel_gives_the_same_report(tmp_path: Path) -> None:
    manifest, shards = make_dataset(tmp_path)
    serial = validate_dataset(manifest, shards, GOOD, min_side=100, raise_on_failure=False)
    parallel = validate_dataset(
        manifest, shards, GOOD, min_side=100, workers=2, raise_on_failure=False
    )
    assert serial.to_dict() == parallel.to_dict()


def test_expected_counts_prefer_params_over_the_registry() -> None:
    params = Params()
    synthetic = params.data.synthetic
    counts = expected_counts(params)
    assert counts.num_classes == synthetic.num_classes
    assert counts.train == synthetic.num_classes * synthetic.train_per_class
    params.data.expected.train = 5
    assert (
        expected_counts(params).train == 5
        and expected_counts(params).num_classes == synthetic.num_classes
    )
