"""The reproduction ledger (``reports/ledger.{json,md}``): for every number the aggregate
publishes, what made it and with what.

A row is one cell of a results table (Table 4, or an ablation variant): dataset, model or
variant, top-1 mean ± std over seeds, the paper's value where it has one
(:mod:`glsim.eval.paper`), and the command that makes it. Under each row, one entry per
seed: its top-1, the digest of the weights that gave it (``weights_sha256``), its run key,
the numerics profile and host it was trained under (copied by the evaluate stage from the
run's ``train.json``) and its own DVC stage. The pretrained backbone every row starts from
is an entry of its own. ``glsim ledger check`` (:mod:`glsim.eval.ledger_check`) compares
another run's folder with ``ledger.json``.

Pure functions of report dicts: reading them and writing the files is the aggregate's
(:func:`glsim.protocol.aggregate_reports`)."""

from __future__ import annotations

from typing import Any

from glsim.eval.paper import paper_value
from glsim.eval.tables import aggregate
from glsim.numerics import host_fingerprint

LEDGER_FORMAT = 1
COMMAND = "dvc repro"
AGGREGATE_STAGE = "aggregate"
RECORD_KEYS = ("run_key", "weights_sha256", "numerics", "host")  # what each entry carries
HOST_FIELDS = ("cpu_model", "isa_flags", "torch", "mkl", "onednn", "python", "gpu", "cuda")
SHORT = 12  # digest characters shown in ledger.md


def command(stage: str) -> str:
    """The command that makes a ledger entry: ``dvc repro <stage>``."""
    return f"{COMMAND} {stage}"


def run_entry(report: dict[str, Any], stage: str) -> dict[str, Any]:
    """One seed's entry from its evaluation report and the DVC stage that wrote it."""
    return {
        "seed": int(report["seed"]),
        "top1": float(report["top1"]),
        **{k: report.get(k) for k in RECORD_KEYS},
        "stage": stage,
        "command": command(stage),
    }


def pretrain_entry(report: dict[str, Any], stage: str) -> dict[str, Any]:
    """The pretrained backbone's entry from ``reports/pretrain.json``."""
    return {
        "number": "upstream_test_acc",
        "value": float(report["upstream_test_acc"]),
        **{k: report.get(k) for k in RECORD_KEYS},
        "stage": stage,
        "command": command(stage),
    }


def build_ledger(
    reports: list[dict[str, Any]],
    stages: list[str],
    *,
    pretrain: dict[str, Any] | None = None,
    pretrain_stage: str = "",
) -> dict[str, Any]:
    """The ledger of the evaluation ``reports`` the aggregate averaged (final runs and
    ablation variants), each with the DVC stage that wrote it (``stages``, in the same
    order), and of the pretraining report (None: the backbone was not pretrained here).

    Rows are in report order, a row's seeds in ascending order; mean and std are the
    results table's (:func:`glsim.eval.tables.aggregate`)."""
    groups: dict[tuple[str, str], list[tuple[dict[str, Any], str]]] = {}
    for report, stage in zip(reports, stages, strict=True):
        groups.setdefault((report["dataset"], report["model"]), []).append((report, stage))
    rows = []
    for (dataset, model), members in groups.items():
        first = members[0][0]
        kind = first.get("kind", "final")
        entry = aggregate([r for r, _ in members])[dataset][model]
        base = first.get("base_model", model)
        rows.append(
            {
                "table": "Table 4" if kind == "final" else "ablation",
                "dataset": dataset,
                "model": model,
                "base_model": base,
                "top1_mean": entry["top1_mean"],
                "top1_std": entry["top1_std"],
                "seeds": [int(s) for s in entry["seeds"]],
                "paper": paper_value(dataset, base) if kind == "final" else None,
                "command": command(AGGREGATE_STAGE),
                "runs": sorted((run_entry(r, s) for r, s in members), key=lambda e: e["seed"]),
            }
        )
    return {
        "format": LEDGER_FORMAT,
        "command": command(AGGREGATE_STAGE),
        "pretrain": pretrain_entry(pretrain, pretrain_stage) if pretrain else None,
        "rows": rows,
    }


def host_line(host: dict[str, Any] | None) -> str:
    """A recorded host on one line (:func:`glsim.numerics.host_fingerprint`; ``unknown``:
    none recorded, ``?``: a field it lacks)."""
    if not host:
        return "unknown"
    return host_fingerprint({**dict.fromkeys(HOST_FIELDS, "?"), "isa_flags": [], **host})


def _hosts(ledger: dict[str, Any]) -> dict[str, str]:
    """Each distinct host line of the ledger -> its label (H1, H2, ... in order of use)."""
    entries = [ledger["pretrain"]] if ledger.get("pretrain") else []
    entries += [run for row in ledger["rows"] for run in row["runs"]]
    labels: dict[str, str] = {}
    for e in entries:
        line = host_line(e.get("host"))
        labels.setdefault(line, f"H{len(labels) + 1}")
    return labels


def _made_with(entries: list[dict[str, Any]], hosts: dict[str, str]) -> tuple[str, str]:
    """``(profiles, hosts)`` of some entries, each distinct value once."""
    profiles = dict.fromkeys(e.get("numerics") or "unknown" for e in entries)
    labels = dict.fromkeys(hosts[host_line(e.get("host"))] for e in entries)
    return ", ".join(profiles), ", ".join(labels)


def _short(digest: str | None) -> str:
    return f"`{digest[:SHORT]}`" if digest else "-"


def render_ledger(ledger: dict[str, Any]) -> str:
    """``ledger.md``: the hosts, the pretrained backbone, one line per published number and
    one per seed."""
    hosts = _hosts(ledger)
    md = [
        "# Reproduction ledger",
        "",
        f"Every number of `reports/results.md` (`{ledger['command']}`), with what it was made "
        "from and with. `glsim ledger check RUN_DIR` compares another run's folder with "
        "`reports/ledger.json` (docs/reproducibility.md). Bits are identical only on the same "
        "host kind and numerics profile.",
        "",
        "## Hosts",
        "",
        "| Host | CPU, instruction sets, libraries |",
        "|---|---|",
        *[f"| {label} | {line} |" for line, label in hosts.items()],
        "",
    ]
    pre = ledger.get("pretrain")
    if pre:
        md += [
            "## Pretrained backbone",
            "",
            "| Number | Value | Profile | Host | Weights sha256 | Command |",
            "|---|---|---|---|---|---|",
            f"| upstream test top-1 (%) | {pre['value']:.2f} | {pre.get('numerics') or 'unknown'} "
            f"| {hosts[host_line(pre.get('host'))]} | {_short(pre.get('weights_sha256'))} "
            f"| `{pre['command']}` |",
            "",
        ]
    md += [
        "## Published numbers (top-1 %, mean ± std over seeds)",
        "",
        "| Table | Dataset | Model | Top-1 | Seeds | Paper | Profile | Host | Command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ledger["rows"]:
        paper = row.get("paper")
        cited = f"{paper['top1_mean']:.2f} ± {paper['top1_std']:.2f}" if paper else "-"
        profiles, labels = _made_with(row["runs"], hosts)
        md.append(
            f"| {row['table']} | {row['dataset']} | {row['model']} | "
            f"{row['top1_mean']:.2f} ± {row['top1_std']:.2f} | "
            f"{', '.join(map(str, row['seeds']))} | {cited} | {profiles} | {labels} | "
            f"`{row['command']}` |"
        )
    if any(row.get("paper") for row in ledger["rows"]):
        md += ["", f"Paper: {next(r['paper']['source'] for r in ledger['rows'] if r['paper'])}."]
    md += [
        "",
        "## Per seed",
        "",
        "| Dataset | Model | Seed | Top-1 | Weights sha256 | Run key | Profile | Host | Command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ledger["rows"]:
        for run in row["runs"]:
            md.append(
                f"| {row['dataset']} | {row['model']} | {run['seed']} | {run['top1']:.2f} | "
                f"{_short(run.get('weights_sha256'))} | `{run.get('run_key') or '-'}` | "
                f"{run.get('numerics') or 'unknown'} | {hosts[host_line(run.get('host'))]} | "
                f"`{run['command']}` |"
            )
    return "\n".join(md) + "\n"


def ledger_table(ledger: dict[str, Any]) -> dict[str, list[Any]]:
    """The ledger as one table, a row per seed (and the backbone), columns as lists: what
    the aggregate logs to MLflow (``mlflow.log_table``)."""
    columns = ("table", "dataset", "model", "seed", "top1", "top1_mean", "top1_std",
               "paper_top1_mean", "paper_top1_std", "weights_sha256", "run_key", "numerics",
               "host", "command")  # fmt: skip
    table: dict[str, list[Any]] = {c: [] for c in columns}

    def add(**cells: Any) -> None:
        for c in columns:
            table[c].append(cells.get(c))

    pre = ledger.get("pretrain")
    if pre:
        add(table="pretrain", model="backbone", top1=pre["value"], host=host_line(pre.get("host")),
            **{k: pre.get(k) for k in ("weights_sha256", "run_key", "numerics", "command")})  # fmt: skip
    for row in ledger["rows"]:
        paper = row.get("paper") or {}
        for run in row["runs"]:
            add(
                table=row["table"], dataset=row["dataset"], model=row["model"],
                seed=run["seed"], top1=run["top1"], top1_mean=row["top1_mean"],
                top1_std=row["top1_std"], paper_top1_mean=paper.get("top1_mean"),
                paper_top1_std=paper.get("top1_std"), host=host_line(run.get("host")),
                **{k: run.get(k) for k in ("weights_sha256", "run_key", "numerics", "command")},
            )  # fmt: skip
    return table
