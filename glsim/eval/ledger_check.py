"""``glsim ledger check RUN_DIR``: does another run reproduce the ledger's numbers?

RUN_DIR is read as the first of these it is:

* a reports folder (``datasets/`` inside; another ``dvc repro``'s ``reports/``): every
  evaluation report under ``datasets/<dataset>/{eval,ablation}/<name>/seed<S>.json``,
  and ``pretrain.json`` when present;
* a run folder (``train.json`` inside): that one run, named by its path
  (``<dataset>/<model>/seed<S>`` or ``<dataset>/ablation/<variant>/seed<S>``);
* a runs folder (``base.runs_dir``): every ``<dataset>/<model>/seed<S>/train.json`` and
  ``<dataset>/ablation/<variant>/seed<S>/train.json`` (LR-search runs publish no number).

Each number found in both is ``same`` (identical weights digest), ``within seed noise``
(|top-1 difference| <= the ledger row's std over seeds; a row of one seed, and the
pretrained backbone's accuracy, allow none) or ``different``. A run folder holds no test
accuracy, so a run in one is ``same`` or ``different``. When not the same, the check says
why: the numerics profile differs, the host differs (CPU model, instruction sets or library
versions), or the run key differs (code, params, data or the backbone the run starts from).
Exit status 0 when every number is the same or within seed noise, 1 when any is
different, 2 for an unusable RUN_DIR or ledger (one ``error:`` line).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from glsim.errors import CommandError
from glsim.eval.ledger import HOST_FIELDS, LEDGER_FORMAT, RECORD_KEYS

T = TypeVar("T")
SAME, NOISE, DIFFERENT = "same", "within seed noise", "different"
PRETRAIN = ("pretrain", "backbone", 0)  # the pretrained backbone's number, by name
LIBRARIES = ("torch", "mkl", "onednn", "python", "cuda")
EPS = 1e-9  # top-1 and std are rounded to 4 places: absorbs float error in a difference
RECORDED = (("weights_sha256", "weights digest"), ("numerics", "profile"), ("host", "host"))


@dataclass
class Number:
    """One number as a folder records it: top-1 (None in a run folder) and what made it."""

    key: tuple[str, str, int]  # (dataset, model or variant, seed); PRETRAIN for the backbone
    top1: float | None
    record: dict[str, Any] = field(default_factory=dict)  # run_key, weights_sha256, numerics, host

    @property
    def label(self) -> str:
        if self.key == PRETRAIN:
            return "pretrained backbone (upstream test top-1)"
        dataset, name, seed = self.key
        return f"{dataset}/{name} seed {seed}"


@dataclass
class Verdict:
    number: Number  # the ledger's
    other: Number
    verdict: str
    why: list[str]
    std: float


# ---------------------------------------------------------------------------------------
# reading


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CommandError(f"{path}: not readable JSON ({err}); is it a glsim report?") from None
    if not isinstance(data, dict):
        raise CommandError(f"{path}: not a glsim report (a JSON object was expected)")
    return data


def _record(data: dict[str, Any]) -> dict[str, Any]:
    record = {k: data[k] for k in RECORD_KEYS if k in data}
    if not isinstance(record.get("host", {}), dict):  # a foreign file: no usable host
        del record["host"]
    return record


def _parsed(path: Path, parse: Callable[[], T]) -> T:
    """``parse()``, or one line naming the file that lacks what it reads."""
    try:
        return parse()
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CommandError(
            f"{path}: not a glsim report or ledger ({type(err).__name__}: {err}); regenerate "
            "it with dvc repro, or give another file"
        ) from None


def ledger_numbers(ledger: dict[str, Any]) -> tuple[dict[tuple, Number], dict[tuple, float]]:
    """The ledger's numbers by key, and each one's noise allowance (its row's std)."""
    numbers, noise = {}, {}
    pre = ledger.get("pretrain")
    if pre:
        numbers[PRETRAIN] = Number(PRETRAIN, float(pre["value"]), _record(pre))
        noise[PRETRAIN] = 0.0
    for row in ledger["rows"]:
        for run in row["runs"]:
            key = (row["dataset"], row["model"], int(run["seed"]))
            numbers[key] = Number(key, float(run["top1"]), _record(run))
            noise[key] = float(row["top1_std"])
    return numbers, noise


def read_ledger(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CommandError(
            f"no ledger at {path}: run the aggregate stage first (dvc repro aggregate), or "
            "give the ledger to compare with as --ledger PATH"
        )
    ledger = _json(path)
    if ledger.get("format") != LEDGER_FORMAT or not isinstance(ledger.get("rows"), list):
        raise CommandError(
            f"{path}: not a ledger of format {LEDGER_FORMAT}; regenerate it with "
            "dvc repro aggregate"
        )
    return ledger


def _report_numbers(reports: Path) -> Iterator[Number]:
    for pattern in ("datasets/*/eval/*/seed*.json", "datasets/*/ablation/*/seed*.json"):
        for path in sorted(reports.glob(pattern)):
            report = _json(path)
            if "skipped" in report or "top1" not in report:
                continue
            yield _parsed(path, lambda r=report: Number(
                (str(r["dataset"]), str(r["model"]), int(r["seed"])), float(r["top1"]), _record(r)
            ))  # fmt: skip
    pretrain = reports / "pretrain.json"
    if pretrain.is_file():
        report = _json(pretrain)
        if "upstream_test_acc" in report:
            yield _parsed(pretrain, lambda: Number(
                PRETRAIN, float(report["upstream_test_acc"]), _record(report)
            ))  # fmt: skip


def run_folder_key(run_dir: Path) -> tuple[str, str, int] | None:
    """``(dataset, model or variant, seed)`` of a run folder's path (None: an LR-search run
    or a path not in the runs layout)."""
    seed = re.fullmatch(r"seed(\d+)", run_dir.name)
    parts = run_dir.parts
    if seed is None or len(parts) < 3:
        return None
    if len(parts) >= 5 and parts[-4] == "lrsearch":
        return None
    if len(parts) >= 4 and parts[-3] == "ablation":
        return parts[-4], parts[-2], int(seed.group(1))
    return parts[-3], parts[-2], int(seed.group(1))


def _run_numbers(run_dirs: list[Path]) -> Iterator[Number]:
    for run_dir in run_dirs:
        key = run_folder_key(run_dir.resolve())
        if key is not None:
            yield Number(key, None, _record(_json(run_dir / "train.json")))


def read_folder(run_dir: Path) -> tuple[str, dict[tuple, Number]]:
    """What RUN_DIR is (see the module docstring) and the numbers it holds, by key."""
    if not run_dir.is_dir():
        raise CommandError(f"{run_dir}: no such folder; give a reports, runs or run folder")
    if (run_dir / "datasets").is_dir():
        kind, found = "reports folder", list(_report_numbers(run_dir))
    elif (run_dir / "train.json").is_file():
        kind, found = "run folder", list(_run_numbers([run_dir]))
    else:
        summaries = sorted(run_dir.glob("*/*/seed*/train.json"))
        summaries += sorted(run_dir.glob("*/ablation/*/seed*/train.json"))
        kind, found = "runs folder", list(_run_numbers([p.parent for p in summaries]))
        if not summaries:
            raise CommandError(
                f"{run_dir}: neither a reports folder (datasets/ inside), a run folder "
                "(train.json inside) nor a runs folder (<dataset>/<model>/seed<S>/train.json "
                "inside); give one of those"
            )
    return kind, {n.key: n for n in found}


# ---------------------------------------------------------------------------------------
# comparing


def host_differences(mine: dict[str, Any] | None, theirs: dict[str, Any] | None) -> list[str]:
    """Which parts of two host records differ: CPU model, instruction sets, libraries."""
    if not mine or not theirs:
        return []
    mine = {**dict.fromkeys(HOST_FIELDS, "?"), **mine}
    theirs = {**dict.fromkeys(HOST_FIELDS, "?"), **theirs}
    out = []
    for part, name in (("cpu_model", "CPU model"), ("gpu", "GPU")):
        if mine[part] != theirs[part]:
            out.append(f"{name} {theirs[part]!r}, ledger {mine[part]!r}")
    mine_isa, their_isa = set(mine["isa_flags"] or []), set(theirs["isa_flags"] or [])
    if mine_isa != their_isa:
        change = [f"+{f}" for f in sorted(their_isa - mine_isa)]
        change += [f"-{f}" for f in sorted(mine_isa - their_isa)]
        out.append(f"instruction sets {' '.join(change)}")
    libs = [f"{k} {theirs[k]}, ledger {mine[k]}" for k in LIBRARIES if mine[k] != theirs[k]]
    if libs:
        out.append("library versions: " + "; ".join(libs))
    return out


def reasons(mine: Number, theirs: Number, backbone_same: bool | None) -> list[str]:
    """Why ``theirs`` is not bit-identical to the ledger's ``mine``."""
    a, b = mine.record, theirs.record
    why = []
    for side, record in (("the ledger", a), ("RUN_DIR", b)):
        missing = [name for key, name in RECORDED if not record.get(key)]
        if missing:
            why.append(f"{side} records no {', '.join(missing)} (made before runs recorded them)")
    profile_differs = bool(
        a.get("numerics") and b.get("numerics") and a["numerics"] != b["numerics"]
    )
    if profile_differs:
        why.append(f"numerics profile differs: {b['numerics']}, ledger {a['numerics']}")
    if a.get("run_key") != b.get("run_key"):
        known = ["the numerics profile"] if profile_differs else []
        if backbone_same is False and mine.key != PRETRAIN:
            known.append("the pretrained backbone")
        verb = "differs" if len(known) == 1 else "differ"
        cause = f"here {' and '.join(known)} {verb}" if known else "code, params or data differ"
        why.append(
            f"run key differs: {b.get('run_key')}, ledger {a.get('run_key')} (it hashes the "
            f"code, params, data, backbone weights and numerics profile; {cause})"
        )
    host = host_differences(a.get("host"), b.get("host"))
    if host:
        why.append("host differs: " + "; ".join(host))
    if not why:
        why.append(
            "same run key, profile and host, yet other bits: the run is not deterministic "
            "here (a GPU without base.deterministic, or a run resumed on another host)"
        )
    return why


def compare(
    ledger: dict[str, Any], theirs: dict[tuple, Number]
) -> tuple[list[Verdict], list[Number], list[Number]]:
    """Verdicts for the numbers in both, then the ledger's numbers RUN_DIR lacks and
    RUN_DIR's numbers the ledger lacks."""
    mine, noise = ledger_numbers(ledger)
    backbone_same = None
    if PRETRAIN in mine and PRETRAIN in theirs:
        digest = mine[PRETRAIN].record.get("weights_sha256")
        backbone_same = bool(digest) and digest == theirs[PRETRAIN].record.get("weights_sha256")
    verdicts = []
    for key, number in mine.items():
        other = theirs.get(key)
        if other is None:
            continue
        digest = number.record.get("weights_sha256")
        if digest and digest == other.record.get("weights_sha256"):
            verdicts.append(Verdict(number, other, SAME, [], noise[key]))
            continue
        near = other.top1 is not None and abs(other.top1 - number.top1) <= noise[key] + EPS
        why = reasons(number, other, backbone_same)
        verdicts.append(Verdict(number, other, NOISE if near else DIFFERENT, why, noise[key]))
    missing = [n for k, n in mine.items() if k not in theirs]
    extra = [n for k, n in theirs.items() if k not in mine]
    return verdicts, missing, extra


def verdict_line(v: Verdict) -> str:
    """One line per number: verdict, the values, and why when not the same."""
    line = f"{v.number.label}: {v.verdict}"
    if v.verdict == SAME:
        line += f" (weights {v.number.record['weights_sha256'][:12]})"
    elif v.other.top1 is None:
        line += f" (no top-1 in a run folder; ledger {v.number.top1:.2f})"
    else:
        diff = abs(v.other.top1 - v.number.top1)
        rule = "<=" if v.verdict == NOISE else ">"
        line += (
            f" (top-1 {v.other.top1:.2f}, ledger {v.number.top1:.2f}: |diff| {diff:.2f} {rule} "
            f"std {v.std:.2f})"
        )
    return line + "".join(f"\n    why: {w}" for w in v.why)


def check(run_dir: Path, ledger_path: Path) -> tuple[int, str]:
    """``(exit status, report)`` of comparing RUN_DIR with the ledger (module docstring)."""
    kind, theirs = read_folder(run_dir)
    ledger = read_ledger(ledger_path)
    verdicts, missing, extra = _parsed(ledger_path, lambda: compare(ledger, theirs))
    if not verdicts:
        raise CommandError(
            f"{run_dir} ({kind}) holds none of the ledger's numbers ({ledger_path}); give the "
            "reports or runs folder of a dvc repro of the same datasets and models"
        )
    counts = {name: sum(v.verdict == name for v in verdicts) for name in (SAME, NOISE, DIFFERENT)}
    lines = [f"{run_dir} ({kind}) against {ledger_path}:"]
    lines += [verdict_line(v) for v in verdicts]
    summary = ", ".join(f"{n} {name}" for name, n in counts.items())
    if missing:
        summary += f"; {len(missing)} of the ledger's numbers not in {run_dir}"
    if extra:
        summary += f"; {len(extra)} not in the ledger ({', '.join(n.label for n in extra[:3])}"
        summary += ", ...)" if len(extra) > 3 else ")"
    lines.append(summary)
    return (1 if counts[DIFFERENT] else 0), "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    status, report = check(args.run_dir, args.ledger)
    print(report, flush=True)
    return status


def add_ledger_commands(subparsers: argparse._SubParsersAction) -> None:
    ledger = subparsers.add_parser(
        "ledger", help="the reproduction ledger (reports/ledger.json)", description=__doc__
    )
    sub = ledger.add_subparsers(dest="ledger_command", required=True)
    p = sub.add_parser(
        "check",
        help="compare a reports, runs or run folder with the ledger (exit 1: a number differs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="reports, runs or run folder")
    p.add_argument(
        "--ledger", type=Path, default=Path("reports/ledger.json"),
        help="the ledger to compare with (default reports/ledger.json)",
    )  # fmt: skip
    p.set_defaults(func=cmd_check)
