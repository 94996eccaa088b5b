"""The ``glsim`` command's tracking subcommands: they parse, and a bad input or a tracking
server that does not answer is one ``error:`` line with exit status 2 (no traceback)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from glsim.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_tracking_subcommands_parse():
    parser = build_parser()
    args = parser.parse_args(["registry", "promote", "cub", "glsim", "--params", "p.yaml"])
    assert (args.dataset, args.model, args.params) == ("cub", "glsim", Path("p.yaml"))
    args = parser.parse_args(["registry", "rollback", "glsim-cub-glsim", "--reason", "drift"])
    assert (args.name, args.reason) == ("glsim-cub-glsim", "drift")
    assert parser.parse_args(["registry", "show", "n", "--json"]).json
    args = parser.parse_args(["tracking", "sync", "runs/a/vit/seed1", "runs/a/vit/seed2"])
    assert args.run_dirs == [Path("runs/a/vit/seed1"), Path("runs/a/vit/seed2")]
    with pytest.raises(SystemExit):
        parser.parse_args(["tracking", "sync"])  # at least one run folder


def test_promote_with_a_missing_params_file_is_one_line(tmp_path, capsys):
    assert main(["registry", "promote", "cub", "vit", "--params", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: params file not found") and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv", [["registry", "show", "glsim-x-vit"], ["registry", "rollback", "glsim-x-vit"]]
)
def test_a_down_tracking_server_is_one_line(argv, monkeypatch, capsys):
    uri = closed_port_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: MLflow tracking server {uri} is not reachable")
    assert err.count("\n") == 1 and "Traceback" not in err



def _params_options(parser) -> dict[str, tuple]:
    """What a parser says of --params, --set and --debug (flags, default, help)."""
    return {
        a.option_strings[0]: (tuple(a.option_strings), a.default, a.help)
        for a in parser._actions
        if a.option_strings and a.option_strings[0] in ("--params", "--set", "--debug")
    }


def _subparsers(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subparsers(sub, (*path, name))


def test_every_command_that_reads_params_takes_params_set_and_debug_the_same_way(capsys):
    """One parent parser (glsim.config.params_parser) for --params/--set/--debug: the same
    spelling, default and help in every glsim command, stage script and the sweep."""
    import ast

    from flows import sweep
    from glsim.cli import build_parser
    from glsim.config import params_parser

    want = _params_options(params_parser())
    readers = {p: _params_options(sub) for p, sub in _subparsers(build_parser())}
    readers = {p: opts for p, opts in readers.items() if "--params" in opts}
    assert {("plan",), ("cost", "bench"), ("data", "prepare"), ("registry", "promote")} <= set(readers)
    assert all(opts == want for opts in readers.values()), readers

    from glsim.protocol.entry import stage_parser

    assert _params_options(stage_parser("a stage")) == want
    for script in sorted((ROOT / "pipelines").glob("*.py")):
        if script.name == "_common.py":
            continue
        tree = ast.parse(script.read_text())
        flags = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
        assert not flags & set(want), f"{script.name} declares its own {flags & set(want)}"
        assert "stage_parser" in {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                                  for a in n.names}, f"{script.name} does not use stage_parser"  # fmt: skip

    with pytest.raises(SystemExit):
        sweep.main(["--help"])
    helped = " ".join(capsys.readouterr().out.split())
    assert all(" ".join(h.split()) in helped for _, _, h in want.values())


def test_output_into_a_closed_pipe_stops_quietly(monkeypatch, capsys):
    """``glsim cost flops ... | head -0``: the reader has gone; no traceback, status 141."""
    import os
    import sys

    read, write = os.pipe()
    os.close(read)
    closed = os.fdopen(write, "w", buffering=1)  # each line is written at once
    monkeypatch.setattr(sys, "stdout", closed)
    try:
        status = main(["cost", "flops", "--model", "vit_tiny_patch16_224", "--image-size", "224"])
    finally:
        closed.close()  # what is left goes to /dev/null, where the command pointed stdout
    assert status == 141
    assert "Traceback" not in capsys.readouterr().err
