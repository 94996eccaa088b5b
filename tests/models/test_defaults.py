"""One home for every default: the params schema. The models layer cannot import the schema,
so each builder repeats its section's defaults; these tests hold the two equal, and check that
``create_model(name)`` with no options builds the model the pipeline trains."""

from __future__ import annotations

import inspect

import pytest
import torch
from tiny import TINY_VIT, tiny_params

import glsim.train.run as train_run
from glsim.config import ModelParams, Params
from glsim.models import create_model, list_models
from glsim.models.registry import _MODELS

VIT_MODELS = ("vit", "glsim", "transfg", "ffvt")
NUM_CLASSES = 3


def builder_defaults(name: str) -> dict:
    """The keyword defaults of the builder registered as ``name``."""
    params = inspect.signature(_MODELS[name]).parameters.values()
    return {p.name: p.default for p in params if p.default is not p.empty}


def test_every_model_section_of_the_schema_is_a_registered_model():
    sections = set(ModelParams.model_fields) - {"backbone"}
    assert sections <= set(list_models())


@pytest.mark.parametrize("name", [n for n in ModelParams.model_fields if n != "backbone"])
def test_builder_defaults_are_the_schema_section_defaults(name):
    section = getattr(ModelParams(), name).model_dump()
    defaults = builder_defaults(name)
    assert {k: defaults.get(k, "<no default>") for k in section} == section


@pytest.mark.parametrize("name", list_models())
def test_builder_defaults_are_what_the_pipeline_passes_on_default_params(name):
    """Backbone name and weights, drop-path rate (the recipe's), the model's own knobs."""
    passed = train_run.model_kwargs(Params(), name)
    defaults = builder_defaults(name)
    if passed.get("backbone_overrides") == {}:  # None and {} both mean "no overrides"
        passed["backbone_overrides"] = None
    assert {k: defaults.get(k, "<no default>") for k in passed} == passed


def hyper_attributes(model: torch.nn.Module) -> dict[str, tuple[str, str]]:
    """Per module: its repr (type and hyperparameters: sizes, drop rates) and its plain
    attributes (``top_k``, ``align_corners``...)."""
    return {
        name: (repr(module), repr({k: v for k, v in vars(module).items() if k[0] != "_"}))
        for name, module in model.named_modules()
    }


@pytest.mark.parametrize("name", VIT_MODELS)
def test_create_model_without_options_builds_the_pipeline_model(name, tmp_path, monkeypatch):
    params = tiny_params(tmp_path)  # tiny backbone; every model option at its default
    monkeypatch.setattr(train_run, "num_classes", lambda _: NUM_CLASSES)  # no shards needed
    torch.manual_seed(0)
    trained = train_run.build(params, name)
    torch.manual_seed(0)
    created = create_model(
        name,
        num_classes=NUM_CLASSES,
        image_size=params.data.image_size,
        backbone=params.model.backbone.name,
        backbone_overrides=dict(TINY_VIT),
    )
    assert hyper_attributes(created) == hyper_attributes(trained)
    ours, theirs = created.state_dict(), trained.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_create_model_glsim_has_the_reference_regularisation():
    """The schema's GLSim defaults reach a notebook's ``create_model("glsim")``."""
    model = create_model(
        "glsim", num_classes=NUM_CLASSES, image_size=32,
        backbone="vit_tiny_patch16_224", backbone_overrides=dict(TINY_VIT),
    )  # fmt: skip
    glsim = Params().model.glsim
    assert model.align_corners is glsim.align_corners is True
    assert model.token_drop.p == glsim.token_drop == 0.2
    assert model.aggregator.drop_path1.drop_prob == Params().train.regularisation().drop_path
