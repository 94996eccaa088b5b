"""glsim/config.py: loading, error messages, overrides, AugReg resolution, round trips."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from glsim.config import (
    Params,
    ParamsError,
    SyntheticParams,
    TrainParams,
    dotted_to_nested,
    load_params,
    params_from_dict,
    write_resolved,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "params.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------
# unknown keys and wrong types


@pytest.mark.parametrize(
    ("yaml_text", "bad_key", "suggestion"),
    [
        ("train:\n  epoch: 3\n", "train.epoch", "train.epochs"),
        ("model:\n  glsim:\n    topk: 4\n", "model.glsim.topk", "model.glsim.top_k"),
        (
            "data:\n  synthetic:\n    num_class: 4\n",
            "data.synthetic.num_class",
            "data.synthetic.num_classes",
        ),
        (
            "model:\n  backbone:\n    weight: null\n",
            "model.backbone.weight",
            "model.backbone.weights",
        ),
    ],
)
def test_unknown_key_names_key_and_closest_valid_key(tmp_path, yaml_text, bad_key, suggestion):
    path = _write(tmp_path, yaml_text)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    msg = str(info.value)
    assert f"unknown key '{bad_key}'" in msg
    assert f"did you mean '{suggestion}'?" in msg
    assert str(path) in msg


def test_unknown_top_level_section_lists_valid_sections(tmp_path):
    with pytest.raises(ParamsError) as info:
        load_params(_write(tmp_path, "trian:\n  lr: 0.1\n"))
    msg = str(info.value)
    assert "unknown key 'trian'" in msg
    assert "did you mean 'train'?" in msg
    for section in ("base", "data", "model", "pretrain", "train", "eval"):
        assert section in msg


def test_unknown_key_without_close_match_has_no_suggestion(tmp_path):
    with pytest.raises(ParamsError) as info:
        load_params(_write(tmp_path, "train:\n  zzzzzz: 1\n"))
    msg = str(info.value)
    assert "unknown key 'train.zzzzzz'" in msg
    assert "did you mean" not in msg


@pytest.mark.parametrize(
    ("yaml_text", "key", "value"),
    [
        ("train:\n  epochs: many\n", "train.epochs", "'many'"),
        ("train:\n  lr: -0.5\n", "train.lr", "-0.5"),
        ("train:\n  augreg: extreme\n", "train.augreg", "'extreme'"),
        ("model:\n  glsim:\n    metric: cosinus\n", "model.glsim.metric", "'cosinus'"),
    ],
)
def test_wrong_type_or_value_names_key_and_value(tmp_path, yaml_text, key, value):
    with pytest.raises(ParamsError) as info:
        load_params(_write(tmp_path, yaml_text))
    assert f"{key} = {value}" in str(info.value)


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(ParamsError) as info:
        load_params(_write(tmp_path, "train:\n  epoch: 3\n  lr: zero\n"))
    msg = str(info.value)
    assert "2 problems" in msg
    assert "train.epoch" in msg and "train.lr = 'zero'" in msg


# ---------------------------------------------------------------------------------------
# files


def test_missing_params_file_names_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ParamsError, match="params file not found") as info:
        load_params(missing)
    assert str(missing) in str(info.value)


def test_invalid_yaml_names_path(tmp_path):
    path = _write(tmp_path, "train:\n  lr: [0.1\n")
    with pytest.raises(ParamsError, match="not valid YAML") as info:
        load_params(path)
    assert str(path) in str(info.value)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ParamsError, match="must be a mapping"):
        load_params(_write(tmp_path, "- 1\n- 2\n"))


def test_empty_file_gives_defaults(tmp_path):
    assert load_params(_write(tmp_path, "")) == Params()


def test_repo_params_yaml_loads():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.data.dataset == "synthetic_fg"
    assert params.protocol.models == ["vit", "glsim"]
    assert params.model.glsim.top_k == 8
    assert params.data.synthetic.object_size == (14, 22)


# ---------------------------------------------------------------------------------------
# overrides


def test_dotted_to_nested():
    assert dotted_to_nested(
        {"train.lr": 0.1, "train.epochs": 2, "model.glsim.top_k": 4, "x": 1}
    ) == {
        "train": {"lr": 0.1, "epochs": 2},
        "model": {"glsim": {"top_k": 4}},
        "x": 1,
    }


def test_dotted_overrides_merge_into_file(tmp_path):
    path = _write(tmp_path, "train:\n  lr: 0.03\n  epochs: 7\nmodel:\n  glsim:\n    top_k: 16\n")
    params = load_params(path, {"train.lr": 0.1, "model.glsim.metric": "l2"})
    assert params.train.lr == 0.1
    assert params.train.epochs == 7  # siblings of an override are kept
    assert params.model.glsim.top_k == 16
    assert params.model.glsim.metric == "l2"


def test_override_with_unknown_key_is_an_error(tmp_path):
    with pytest.raises(ParamsError, match=r"unknown key 'train\.lrr'.*did you mean 'train\.lr'"):
        load_params(_write(tmp_path, "train:\n  lr: 0.03\n"), {"train.lrr": 0.1})


def test_override_with_wrong_type_is_an_error(tmp_path):
    with pytest.raises(ParamsError, match=r"train\.batch_size = 'big'"):
        load_params(_write(tmp_path, ""), {"train.batch_size": "big"})


def test_params_from_dict_rejects_non_mapping():
    with pytest.raises(ParamsError, match="got list"):
        params_from_dict([1, 2])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# AugReg (METHOD.md, Table 11)


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (
            "minimal",
            {
                "label_smoothing": 0.0,
                "drop_path": 0.0,
                "erasing_prob": 0.0,
                "trivial_augment": False,
            },
        ),
        (
            "weak",
            {
                "label_smoothing": 0.1,
                "drop_path": 0.0,
                "erasing_prob": 0.0,
                "trivial_augment": False,
            },
        ),
        (
            "medium",
            {
                "label_smoothing": 0.1,
                "drop_path": 0.1,
                "erasing_prob": 0.0,
                "trivial_augment": False,
            },
        ),
        (
            "strong",
            {
                "label_smoothing": 0.1,
                "drop_path": 0.1,
                "erasing_prob": 0.3,
                "trivial_augment": True,
            },
        ),
    ],
)
def test_regularisation_per_augreg_level(level, expected):
    assert asdict(TrainParams(augreg=level).regularisation()) == expected


def test_regularisation_uses_configured_values():
    train = TrainParams(augreg="strong", label_smoothing=0.2, drop_path=0.25, erasing_prob=0.5)
    assert asdict(train.regularisation()) == {
        "label_smoothing": 0.2,
        "drop_path": 0.25,
        "erasing_prob": 0.5,
        "trivial_augment": True,
    }


# ---------------------------------------------------------------------------------------
# resolved params and digests


def test_write_resolved_round_trips(tmp_path):
    params = load_params(REPO_ROOT / "params.yaml", {"train.lr": 0.003, "model.glsim.top_k": 4})
    out = write_resolved(params, tmp_path / "stage")
    assert out == tmp_path / "stage" / "params.resolved.yaml"
    assert load_params(out) == params
    assert [p.name for p in out.parent.iterdir()] == ["params.resolved.yaml"]  # no temp file left
    assert yaml.safe_load(out.read_text())["train"]["lr"] == 0.003


def test_digest_is_stable_and_per_section():
    a, b = Params(), Params.model_validate({"train": {"lr": 0.5}})
    assert a.digest() == Params().digest()
    assert len(a.digest()) == 12
    assert a.digest() != b.digest()
    assert a.digest("model", "data") == b.digest("model", "data")
    assert a.digest("train") != b.digest("train")


# ---------------------------------------------------------------------------------------
# SyntheticParams ranges


def test_synthetic_defaults_are_valid():
    assert SyntheticParams().object_size == (14, 22)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"object_size": (5, 10)}, "6 <= min <= max"),
        ({"object_size": (20, 10)}, "6 <= min <= max"),
        ({"object_size": (14, 44), "canvas_size": 86}, "at most half of canvas_size"),
        ({"distractors": (3, 1)}, "0 <= min <= max"),
        ({"distractors": (-1, 2)}, "0 <= min <= max"),
        ({"num_classes": 1}, "greater than or equal to 2"),
        ({"num_classes": 65}, "less than or equal to 64"),
        ({"canvas_size": 8}, "greater than or equal to 16"),
    ],
)
def test_synthetic_range_validation(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        SyntheticParams(**kwargs)


def test_synthetic_boundary_values_are_accepted():
    SyntheticParams(object_size=(6, 6), canvas_size=16, distractors=(0, 0))
    SyntheticParams(object_size=(14, 43), canvas_size=86)


def test_synthetic_range_error_in_file_names_the_section(tmp_path):
    path = _write(tmp_path, "data:\n  synthetic:\n    canvas_size: 30\n    object_size: [14, 22]\n")
    with pytest.raises(ParamsError, match="data.synthetic") as info:
        load_params(path)
    assert "at most half of canvas_size" in str(info.value)


def test_overrides_on_non_mapping_file_give_params_error(tmp_path):
    with pytest.raises(ParamsError, match="must be a mapping"):
        load_params(_write(tmp_path, "- 1\n- 2\n"), {"train.lr": 0.1})


def test_keys_that_moved_say_where_to():
    with pytest.raises(ParamsError, match=r"unknown key 'train.seeds'; it moved to 'protocol.seeds'"):
        params_from_dict({"train": {"seeds": [1, 10]}})


def test_cpu_amp_off_survives_yaml(tmp_path):
    # YAML reads a bare off/on as a boolean; the key must still mean what was typed
    from glsim.config import load_params, parse_sets

    assert load_params("params.yaml", parse_sets(["train.cpu_amp=off"])).train.cpu_amp == "off"
    assert load_params("params.yaml", parse_sets(["train.cpu_amp=on"])).train.cpu_amp == "bf16"
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  cpu_amp: off\n")
    assert load_params(path).train.cpu_amp == "off"


def test_curve_epochs_are_one_number_or_one_per_task():
    from glsim.config import CurveParams

    assert CurveParams(epochs=7).epochs_for("self_distillation") == 7
    per_task = CurveParams(epochs={"colour": 12, "self_distillation": 5})
    assert (per_task.epochs_for("colour"), per_task.epochs_for("self_distillation")) == (12, 5)
    with pytest.raises(ValueError, match="no entry for self_distillation"):
        CurveParams(epochs={"colour": 12})
