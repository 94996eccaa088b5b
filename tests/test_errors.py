"""What a user sees when the machine, not the code, fails: one ``error:`` line naming the
path and exit status 2, with the earlier good file still in place; a real bug keeps its
traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import glsim.utils
from glsim.errors import guarded
from glsim.train.checkpoint import TrainState, read_checkpoint, save_checkpoint
from glsim.utils import atomic_write_text


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _disk_full(*args, **kwargs) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a writer reports it: no path


def test_a_full_disk_while_saving_a_checkpoint_names_it_and_keeps_the_old_one(
    tmp_path, monkeypatch, capsys
):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run" / "last.pt"

    def save(epoch: int) -> None:
        save_checkpoint(
            path, model=model, optimizer=optimizer, scaler=None, state=TrainState(epoch=epoch)
        )

    save(1)

    def partial_then_full(obj, f) -> None:
        f.write(b"PK\x03\x04 half a zip")
        _disk_full()

    monkeypatch.setattr(glsim.utils.torch, "save", partial_then_full)
    assert guarded(lambda: save(2), debug=False) == 2
    line = _one_error_line(capsys)
    assert f"{path}: No space left on device; free disk space" in line
    assert read_checkpoint(path)["state"]["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for target in (Path("/proc/no_such_folder/runs/x.json"), blocker / "runs" / "x.json"):
        assert guarded(lambda t=target: atomic_write_text(t, "{}"), debug=False) == 2
        line = _one_error_line(capsys)
        assert str(target.parent.parent) in line and "cannot be made there" in line


def test_a_missing_file_that_is_not_a_folder_being_made_keeps_its_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        guarded(lambda: (tmp_path / "missing.txt").read_text(), debug=False)


# ---------------------------------------------------------------------------------------
# params that only fail once a model is built are refused when the params are checked


def _tiny(tmp_path: Path, **overrides):
    from tiny import tiny_params

    return tiny_params(tmp_path).with_overrides(overrides)


def test_an_unknown_backbone_is_refused_with_the_closest_timm_name(tmp_path):
    from glsim.config import ParamsError, check_params

    with pytest.raises(ParamsError, match=r"did you mean 'vit_tiny_patch16_224'\?") as info:
        check_params(_tiny(tmp_path, **{"model.backbone.name": "vit_tiny_patch16_24"}))
    assert "\n" not in str(info.value) and "model.backbone.name" in str(info.value)
    with pytest.raises(ParamsError, match=r"not a timm VisionTransformer|timm cannot build it"):
        check_params(_tiny(tmp_path, **{"model.backbone.name": "resnet18"}))


@pytest.mark.parametrize("size,fragment", [(30, "last 6 px.*use 24 or 32"), (17, "use 16 or 24$")])
def test_an_image_size_the_patches_do_not_tile_names_the_nearest_sizes(tmp_path, size, fragment):
    from glsim.config import ParamsError, check_params

    with pytest.raises(ParamsError, match=rf"data.image_size {size} .* patch size 8.*{fragment}"):
        check_params(_tiny(tmp_path, **{"data.image_size": size}))
    check_params(_tiny(tmp_path, **{"data.image_size": 24}))


def test_an_image_size_is_not_checked_against_a_backbone_no_model_uses(tmp_path):
    from glsim.config import check_params, params_from_dict

    tree = _tiny(tmp_path, **{"data.image_size": 30}).model_dump(mode="json")
    tree["protocol"]["models"] = ["resnet101"]
    tree["ablations"] = {"variants": {}, "tables": {}}
    check_params(params_from_dict(tree))


def test_the_train_stage_with_an_unknown_backbone_is_one_line_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    tree = _tiny(tmp_path, **{"model.backbone.name": "vit_tiny_patch16_24"}).model_dump(mode="json")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tree))
    out = subprocess.run(
        [sys.executable, "pipelines/train.py", "--params", str(params), "--model", "vit", "--seed", "1"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "did you mean 'vit_tiny_patch16_224'" in lines[0], out.stderr
    assert not (tmp_path / "runs").exists()


def test_under_torchrun_the_error_line_is_the_root_cause_the_launcher_shows(
    tmp_path, monkeypatch, capsys
):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from glsim.config import ParamsError

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))

    def bad_params() -> None:
        raise ParamsError("train.batch_size 7 does not split over 2 processes; use a multiple of 2")

    assert guarded(bad_params, debug=False) == 2
    line = _one_error_line(capsys)
    failure = ProcessFailure(local_rank=1, pid=1, exitcode=2, error_file=str(error_file))
    assert failure.message == line  # the "traceback :" field of torchrun's failure summary


def test_each_reported_error_is_a_json_line_that_reads_back_as_the_same_exception(
    tmp_path, monkeypatch, capsys
):
    """What a torchrun rank tells whoever started it: one record per error, in the order
    written, read back as the error's class (a subclass as the user error it is) and
    message; a described disk error as the OSError with its errno and path."""
    from glsim.data.registry import DatasetError, UnknownDataset
    from glsim.errors import ERROR_RECORD_ENV, error_of, read_error_records
    from glsim.train.loop import TrainingDiverged

    record = tmp_path / "errors.jsonl"
    monkeypatch.setenv(ERROR_RECORD_ENV, str(record))
    raised = [
        TrainingDiverged("loss is nan at epoch 1 step 3"),
        UnknownDataset("unknown dataset 'cubb'; did you mean 'cub'?"),
        OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs")),
    ]
    for rank, err in enumerate(raised):
        monkeypatch.setenv("RANK", str(rank))

        def fail(err=err):
            raise err

        assert guarded(fail, debug=False) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 3  # the lines, as before
    records = read_error_records(record)
    assert [(r["rank"], r["error"]) for r in records] == [
        (0, "TrainingDiverged"), (1, "DatasetError"), (2, "OSError"),
    ]  # fmt: skip
    diverged, unknown, disk = (error_of(r) for r in records)
    assert type(diverged) is TrainingDiverged and str(diverged) == str(raised[0])
    assert type(unknown) is DatasetError and "did you mean 'cub'" in str(unknown)
    assert disk.errno == errno.ENOSPC and disk.filename == str(tmp_path / "runs")
    assert read_error_records(tmp_path / "none.jsonl") == []


def test_a_runs_uri_with_the_tracking_server_down_is_one_line_naming_it(monkeypatch, capsys):
    import socket

    from glsim.inference import load_predictor

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    assert guarded(lambda: load_predictor("runs:/0123abcd/model"), debug=False) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: --model runs:/0123abcd/model: is the tracking server up?")
    assert f"127.0.0.1:{port}" in line and "urllib3" not in line and "0x" not in line


@pytest.mark.parametrize("kind", ["final", "lrsearch"])
def test_training_names_an_image_that_does_not_decode_by_the_users_file(tmp_path, kind):
    """Prepare checks every image; one broken after that reaches the shards (sharding does
    not decode) and training names the user's file, for the final and the LR-search
    shards, whose paths are relative to different manifests."""
    from tiny import imagefolder_params

    from glsim.data.shards import ShardError
    from glsim.protocol.data import shard
    from glsim.runs import RunSpec
    from glsim.train.run import train_run

    params = imagefolder_params(tmp_path, classes=2)
    bad = tmp_path / "src" / "train" / "species_000" / "0.png"
    bad.write_bytes(b"broken after prepare")
    shard(params)
    spec = RunSpec("vit", 1, lr=0.01, kind=kind)
    with pytest.raises(ShardError, match=rf"image {bad} \(sample '.*'\) does not decode"):
        train_run(params, spec, track=False)


@pytest.mark.slow
@pytest.mark.integration
def test_glsim_torchrun_exits_2_with_the_ranks_error_line(tmp_path):
    """Under ``glsim torchrun`` a rank's input error is the launcher's exit status 2 and the
    rank's one line, not torchrun's ChildFailedError summary and status 1."""
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    tree = _tiny(tmp_path, **{"data.image_size": 30}).model_dump(mode="json")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tree))
    out = subprocess.run(
        [sys.executable, "-m", "glsim.cli", "torchrun", "--standalone", "--nproc_per_node=2",
         "pipelines/train.py", "--params", str(params), "--model", "vit", "--seed", "1"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "ChildFailedError" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    # each rank's own line (torchrun may also warn that it set OMP_NUM_THREADS)
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 2 and len(set(lines)) == 1, out.stderr
    assert lines[0].startswith("error:") and "last 6 px" in lines[0]
    assert not (tmp_path / "runs").exists()
