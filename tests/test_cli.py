"""The ``glsim`` command's tracking subcommands: they parse, and a bad input or a tracking
server that does not answer is one ``error:`` line with exit status 2 (no traceback)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from glsim.cli import build_parser, main


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
