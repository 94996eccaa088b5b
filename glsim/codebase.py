"""What code a stage or a run executes, read from the source: the import closure of
``glsim`` modules and a digest of it.

Two promises rest on this module. A keyed run (:func:`glsim.runs.run_key`) includes
:func:`code_digest` of the modules its training executes, so a finished run is repeated
when that code changes; and each stage of ``dvc.yaml`` lists, as code deps, the closure of
its script (``tests/test_stage_deps.py`` checks it, ``python -m glsim.codebase
pipelines/train.py`` prints it).

The closure follows every ``import``/``from ... import`` of a ``glsim`` module anywhere in a
file (also inside functions, where a stage imports what it needs late), the packages above
each module (their ``__init__`` runs first) and the scripts beside a stage script (its
``_common``). It is a superset of what one run imports, never less. The digest is of the
parsed code with docstrings removed (:func:`normalised_source`): comments, docstrings and
formatting do not move it, any change to what the code does does.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "glsim"
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def module_file(name: str) -> Path | None:
    """The source file of the ``glsim`` module ``name`` (a package's ``__init__.py``)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = REPO_ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str | None:
    """The dotted name of a file under ``glsim/`` (None for a script elsewhere)."""
    path = path.resolve()
    try:
        rel = path.relative_to(REPO_ROOT)
    except ValueError:
        return None
    if rel.parts[0] != PACKAGE:
        return None
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _is_import_module(node: ast.Call) -> bool:
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
    return name == "import_module" and bool(node.args)


def _dynamic_targets(arg: ast.expr) -> set[str]:
    """``import_module("glsim.a")`` names ``glsim.a``; ``import_module(f"glsim.a.{x}")`` names
    every module of the package ``glsim.a`` (a superset of what it can load)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return {arg.value}
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = str(arg.values[0].value)
        package = prefix.rstrip(".")
        folder = module_file(package)
        if prefix.endswith(".") and folder is not None and folder.name == "__init__.py":
            return {package} | {f"{package}.{p.stem}" for p in folder.parent.glob("*.py")}
        if prefix.endswith("."):
            base = REPO_ROOT.joinpath(*package.split("."))
            return {package} | {f"{package}.{p.stem}" for p in base.glob("*.py")}
    return set()


def imported_files(path: Path) -> set[Path]:
    """The ``glsim`` files (and sibling scripts) ``path`` imports, directly."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = module_name(path)
    package = own if path.name == "__init__.py" else (own.rpartition(".")[0] if own else None)
    names: set[str] = set()
    siblings: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.name)
                sibling = path.parent / f"{alias.name}.py"
                if own is None and sibling.is_file():
                    siblings.add(sibling.resolve())
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .a import b
                if package is None:
                    continue
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
                sibling = path.parent / f"{base}.py"
                if own is None and sibling.is_file():
                    siblings.add(sibling.resolve())
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # submodules
        elif isinstance(node, ast.Call) and _is_import_module(node):
            names.update(_dynamic_targets(node.args[0]))
    files = set(siblings)
    for name in names:
        if not name.startswith(PACKAGE):
            continue
        for full in _with_parents(name):
            found = module_file(full)
            if found is not None:
                files.add(found.resolve())
    return files


def closure(roots: Iterable[str | Path], exclude: Iterable[str] = ()) -> set[Path]:
    """Every file the ``roots`` (module names or file paths) execute through imports,
    the roots included. ``exclude`` names modules or packages (``glsim.tracking``) whose
    files are neither included nor followed."""
    excluded = tuple(exclude)

    def kept(p: Path) -> bool:
        name = module_name(p)
        return name is None or not any(name == e or name.startswith(e + ".") for e in excluded)

    todo: list[Path] = []
    for root in roots:
        path = module_file(root) if isinstance(root, str) and not root.endswith(".py") else Path(root)
        if path is None or not path.is_file():
            raise FileNotFoundError(f"{root}: no such module or file")
        todo.append(path.resolve())
        name = module_name(path)
        for parent in _with_parents(name)[:-1] if name else ():
            found = module_file(parent)  # None: a namespace package (no __init__.py)
            if found is not None:
                todo.append(found.resolve())
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen or not kept(path):
            continue
        seen.add(path)
        todo.extend(imported_files(path) - seen)
    return seen


def normalised_source(path: Path) -> str:
    """The parsed code of ``path`` without docstrings: what it does, not how it reads."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body[0] = ast.Pass()
    return ast.dump(tree, include_attributes=False)


def code_digest(files: Iterable[Path]) -> str:
    """One hash of the normalised code of ``files`` (named relative to the repository)."""
    h = hashlib.sha256()
    for path in sorted(Path(f).resolve() for f in files):
        rel = path.relative_to(REPO_ROOT).as_posix()
        h.update(rel.encode() + b"\0" + normalised_source(path).encode() + b"\0")
    return h.hexdigest()[:16]


def relative(files: Iterable[Path]) -> list[str]:
    return sorted(Path(f).resolve().relative_to(REPO_ROOT).as_posix() for f in files)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Print the glsim files a script or module imports.")
    p.add_argument("roots", nargs="+", help="scripts (pipelines/train.py) or modules (glsim.train.run)")
    args = p.parse_args(argv)
    for rel in relative(closure(args.roots)):
        print(rel)


if __name__ == "__main__":
    main()
