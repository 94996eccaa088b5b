"""Each stage of ``dvc.yaml`` and ``curve/dvc.yaml`` lists as code deps exactly the files its
script executes (:func:`glsim.codebase.closure`): a file it runs but does not list would
leave the stage "up to date" over stale outputs after an edit, and a file it lists but never
runs would rerun it for nothing. Its params are keys of the params schema, so a renamed key
fails here rather than being silently never read."""

from __future__ import annotations

import shlex
import types
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from glsim.codebase import REPO_ROOT, closure
from glsim.config import Params

PIPELINE_FILES = ("dvc.yaml", "curve/dvc.yaml")
CODE_FOLDERS = ("glsim", "pipelines")


def dvc_stages() -> dict[str, tuple[dict, Path, dict[str, str]]]:
    """Every stage by its ``dvc status`` name: its body, its wdir, and the marker and
    values template of each axis it is generated over (``{"${item.model}":
    "${protocol.models}"}``; ``foreach``: ``{"${item}": ...}``)."""
    stages = {}
    for rel in PIPELINE_FILES:
        doc = yaml.safe_load((REPO_ROOT / rel).read_text())
        prefix = "" if rel == "dvc.yaml" else f"{rel}:"
        for name, stage in doc["stages"].items():
            body = stage.get("do", stage)
            wdir = ((REPO_ROOT / rel).parent / stage.get("wdir", ".")).resolve()
            axes = {"${item." + k + "}": v for k, v in stage.get("matrix", {}).items()}
            if "foreach" in stage:
                axes["${item}"] = stage["foreach"]
            stages[prefix + name] = (body, wdir, axes)
    return stages


STAGES = dvc_stages()


def stage_script(body: dict, wdir: Path) -> Path:
    """The ``pipelines/X.py`` its ``cmd`` runs with python."""
    scripts = [t for t in shlex.split(body["cmd"]) if t.endswith(".py")]
    assert len(scripts) == 1, f"cmd {body['cmd']!r}: expected one python script"
    return wdir / scripts[0]


def listed_code(body: dict, wdir: Path) -> list[Path]:
    """Its deps under glsim/ or pipelines/ (data deps, templated or not, are left out)."""
    code = []
    for dep in body.get("deps", []):
        path = (wdir / dep).resolve()
        rel = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else None
        if "${" not in dep and rel is not None and rel.parts[0] in CODE_FOLDERS:
            code.append(path)
    return code


def python_files(path: Path) -> set[Path]:
    if path.is_dir():
        return {p for p in path.rglob("*.py") if "__pycache__" not in p.parts}
    return {path}


def covering_deps(files: set[Path]) -> list[str]:
    """The shortest dep list naming exactly ``files``: a folder wherever all of its Python
    files are in ``files``, else the files themselves."""
    deps = set()
    for f in files:
        top = f
        for folder in f.parents:
            if folder == REPO_ROOT or not python_files(folder) <= files:
                break
            top = folder
        deps.add(top.relative_to(REPO_ROOT).as_posix())
    return sorted(d for d in deps if not any(d.startswith(o + "/") for o in deps))


def rel(files: set[Path]) -> str:
    return "\n  ".join(sorted(f.relative_to(REPO_ROOT).as_posix() for f in files))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_what_the_stage_script_executes(stage):
    body, wdir, _ = STAGES[stage]
    executed = closure([stage_script(body, wdir)])
    listed = listed_code(body, wdir)
    missing_paths = [p for p in listed if not p.exists()]
    assert not missing_paths, f"{stage}: deps that do not exist:\n  {rel(set(missing_paths))}"
    covered = set().union(*(python_files(p) for p in listed))
    uncovered, unused = executed - covered, covered - executed
    fix = "\n    - ".join(covering_deps(executed))
    assert not uncovered, (
        f"stage {stage} executes code its deps do not cover (an edit to it would leave the "
        f"stage up to date):\n  {rel(uncovered)}\nits code deps should be:\n    - {fix}"
    )
    assert not unused, (
        f"stage {stage} lists code it never executes (an edit to it would rerun the stage "
        f"for nothing):\n  {rel(unused)}\nits code deps should be:\n    - {fix}"
    )


def schema_has(dotted: str) -> str | None:
    """None when ``dotted`` names a node of the params schema, else what is wrong. Below a
    ``dict[str, X]`` field any key is allowed (``data.datasets.cub``)."""
    node: typing.Any = Params
    for i, key in enumerate(dotted.split(".")):
        origin = typing.get_origin(node)
        if origin is dict:
            node = typing.get_args(node)[1]
            continue
        if origin in (typing.Union, types.UnionType):  # Optional[X]: X
            models = [a for a in typing.get_args(node) if isinstance(a, type)]
            node = next((a for a in models if issubclass(a, BaseModel)), node)
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return f"{'.'.join(dotted.split('.')[:i])} is a value, it has no key {key!r}"
        if key not in node.model_fields:
            return f"{key!r} is not a key of {node.__name__} ({', '.join(node.model_fields)})"
        node = node.model_fields[key].annotation
    return None


def resolved_params(stage: str) -> list[str]:
    """Its ``params`` keys with each ``${item.X}`` replaced by every value of its matrix
    (read from params.yaml: ``model.${item.model}`` -> ``model.vit``, ``model.glsim``)."""
    body, _, axes = STAGES[stage]
    values = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())

    def items(template: str | list) -> list[str]:
        if isinstance(template, list):
            return [str(v) for v in template]
        node = values
        for part in template.removeprefix("${").removesuffix("}").split("."):
            node = node[part]
        return [str(k) for k in node]  # a list's values or a dict's keys

    keys = []
    for key in body.get("params", []):
        assert isinstance(key, str), f"{stage}: params entry {key!r}: expected a key of params.yaml"
        expanded = [key]
        for marker, template in axes.items():
            expanded = [k.replace(marker, v) for k in expanded for v in items(template)]
        keys.extend(sorted(set(expanded)))
    return keys


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_params_are_keys_of_the_schema(stage):
    wrong = {key: why for key in resolved_params(stage) if (why := schema_has(key))}
    assert not wrong, f"stage {stage} lists params the schema has not: {wrong}"
