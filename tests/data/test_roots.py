"""A user dataset's images stay inside its root: a CSV row or a symlink that leads to another
file, or a file that is not an image, is refused at prepare with one line naming the user's
path, and nothing is written."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from tiny import write_csv_dataset, write_imagefolder

from glsim.config import for_dataset, params_from_dict
from glsim.data.registry import DatasetError, prepare_dataset
from glsim.errors import guarded


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A readable image that belongs to no dataset."""
    source = write_imagefolder(tmp_path / "elsewhere", classes=1, train=1, test=0)
    return source / "train" / "species_000" / "0.png"


def _csv_row(csv: Path, path: str) -> None:
    table = pd.read_csv(csv)
    table.loc[0, "path"] = path
    table.to_csv(csv, index=False)


def _refused(source: str, raw: Path, fragment: str, **kwargs) -> None:
    with pytest.raises(DatasetError, match=fragment) as info:
        prepare_dataset(source, raw, name="mine", **kwargs)
    assert "\n" not in str(info.value)
    assert not (raw / "mine").exists()


def test_a_csv_row_climbing_out_of_the_csv_folder_is_refused(tmp_path, outside):
    csv = write_csv_dataset(tmp_path / "src", classes=2)
    _csv_row(csv, os.path.relpath(outside, csv.parent))
    _refused(
        f"csv:{csv}", tmp_path / "raw", rf"row 2\) resolves to {outside}, outside {csv.parent}"
    )


def test_an_absolute_csv_row_outside_the_roots_is_refused_unless_allowed(tmp_path, outside):
    csv = write_csv_dataset(tmp_path / "src", classes=2)
    _csv_row(csv, str(outside))
    _refused(f"csv:{csv}", tmp_path / "raw", rf"{csv.name}: image {outside} \(row 2\)")
    manifest = prepare_dataset(
        f"csv:{csv}", tmp_path / "raw", name="mine", allowed_roots=[outside.parent]
    )
    assert pd.read_csv(manifest)["path"].str.endswith("elsewhere/train/species_000/0.png").any()


def test_allowed_roots_come_from_the_dataset_entry(tmp_path, outside):
    csv = write_csv_dataset(tmp_path / "src", classes=2)
    _csv_row(csv, str(outside))
    entry = {"source": f"csv:{csv}", "allowed_roots": [str(tmp_path / "elsewhere")]}
    params = for_dataset(params_from_dict({"data": {"datasets": {"mine": entry}}}), "mine")
    assert params.data.allowed_roots == [tmp_path / "elsewhere"]
    prepare_dataset(params.data.dataset_source, tmp_path / "raw", name="mine", params=params)
    with pytest.raises(Exception, match=r"allowed_roots must be a list of folders"):
        params_from_dict({"data": {"datasets": {"mine": {"allowed_roots": "/mnt"}}}})


def test_a_symlink_out_of_the_image_folder_is_refused(tmp_path, outside):
    source = write_imagefolder(tmp_path / "src", classes=2)
    link = source / "train" / "species_000" / "link.png"
    link.symlink_to(outside)
    _refused(
        f"imagefolder:{source}",
        tmp_path / "raw",
        rf"image {link} is a symlink to {outside}, outside",
    )
    # a link that stays inside the folder is an ordinary image
    link.unlink()
    link.symlink_to(source / "train" / "species_001" / "0.png")
    assert prepare_dataset(f"imagefolder:{source}", tmp_path / "raw", name="mine").is_file()


@pytest.mark.parametrize("content", [b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_a_file_that_is_not_an_image_is_refused_by_its_own_path(tmp_path, content):
    source = write_imagefolder(tmp_path / "src", classes=2)
    bad = source / "train" / "species_001" / "broken.png"
    bad.write_bytes(content)
    _refused(f"imagefolder:{source}", tmp_path / "raw", rf"{bad} is not a readable image")


def test_the_refusal_is_one_error_line_and_exit_2(tmp_path, outside, capsys):
    csv = write_csv_dataset(tmp_path / "src", classes=2)
    _csv_row(csv, str(outside))
    code = guarded(lambda: prepare_dataset(f"csv:{csv}", tmp_path / "raw", name="m"), debug=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and str(outside) in err[0]


def test_shards_refuse_an_image_that_left_the_folders_it_was_prepared_from(tmp_path, outside):
    from glsim.data.shards import ShardError, write_shards

    source = write_imagefolder(tmp_path / "src", classes=2)
    manifest = prepare_dataset(f"imagefolder:{source}", tmp_path / "raw", name="mine")
    image = source / "train" / "species_000" / "0.png"
    image.unlink()
    image.symlink_to(outside)  # swapped after prepare
    with pytest.raises(ShardError, match=rf"image .*0\.png .* resolves to {outside}, outside"):
        write_shards(manifest, tmp_path / "shards", max_count=64, max_bytes=1 << 22)
    assert not (tmp_path / "shards").exists()


def test_the_prepare_command_takes_allowed_roots(tmp_path, outside, capsys):
    from glsim.cli import main

    csv = write_csv_dataset(tmp_path / "src", classes=2)
    _csv_row(csv, str(outside))
    args = ["data", "prepare", f"csv:{csv}", "--root", str(tmp_path / "raw"), "--name", "m"]
    assert main(args) == 2
    assert "allowed_roots" in capsys.readouterr().err
    assert main([*args, "--allowed-root", str(outside.parent)]) == 0
