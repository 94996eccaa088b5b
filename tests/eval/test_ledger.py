"""glsim/eval/ledger.py and ledger_check.py: the ledger built from a small reports tree
written here (no training), and ``glsim ledger check`` on an identical folder, one within
seed noise, one from another host, one under another profile, runs and run folders, and
unusable input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from glsim.cli import main
from glsim.eval.ledger import build_ledger, ledger_table, render_ledger
from glsim.eval.ledger_check import run_folder_key

EPYC = {
    "cpu_model": "AMD EPYC 9R14", "isa_flags": ["avx2", "fma", "avx512f", "avx512_bf16"],
    "torch": "2.14.1", "mkl": "2024.2", "onednn": "v3.12.0", "python": "3.11.7",
}  # fmt: skip
XEON = {
    **EPYC, "cpu_model": "Intel Xeon Platinum 8488C",
    "isa_flags": [*EPYC["isa_flags"], "amx_tile", "amx_bf16"],
}  # fmt: skip
# (dataset, model or variant, kind) -> top-1 per seed 1, 10, 100
TOP1 = {
    ("synthetic_fg", "vit", "final"): (70.0, 72.0, 74.0),  # std 2.0
    ("synthetic_fg", "glsim", "final"): (80.0, 80.5, 81.0),  # std 0.5
    ("synthetic_fg", "glsim_random_no_aggregator", "ablation"): (75.0, 75.0, 75.0),  # std 0
    ("cub", "glsim", "final"): (90.0, 91.0, 92.0),
}
SEEDS = (1, 10, 100)


def digest(dataset: str, name: str, seed: int) -> str:
    return hashlib.sha256(f"{dataset}/{name}/{seed}".encode()).hexdigest()


def record(dataset: str, name: str, seed: int, host: dict = EPYC) -> dict:
    return {
        "run_key": f"key-{dataset}-{name}-{seed}", "weights_sha256": digest(dataset, name, seed),
        "numerics": "native", "host": dict(host),
    }  # fmt: skip


def write_reports(root: Path) -> Path:
    """A reports folder as the evaluate and pretrain stages write it."""
    for (dataset, name, kind), values in TOP1.items():
        folder = "eval" if kind == "final" else "ablation"
        for seed, top1 in zip(SEEDS, values, strict=True):
            path = root / "datasets" / dataset / folder / name / f"seed{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            base = "glsim" if kind == "ablation" else name
            report = {"dataset": dataset, "model": name, "base_model": base, "kind": kind,
                      "seed": seed, "lr": 0.01, "top1": top1, **record(dataset, name, seed)}  # fmt: skip
            path.write_text(json.dumps(report))
    pretrain = {"upstream_test_acc": 79.0, "run_key": "pre", "weights_sha256": "b" * 64,
                "numerics": "native", "host": EPYC}  # fmt: skip
    (root / "pretrain.json").write_text(json.dumps(pretrain))
    return root


def stage(report: dict) -> str:
    if report["kind"] == "ablation":
        return f"ablation@{report['dataset']}-{report['model']}-{report['seed']}"
    return f"evaluate@{report['dataset']}-{report['model']}-{report['seed']}"


def ledger_of(reports: Path) -> dict:
    found = [json.loads(p.read_text()) for p in sorted(reports.glob("datasets/*/*/*/seed*.json"))]
    pretrain = json.loads((reports / "pretrain.json").read_text())
    return build_ledger(
        found, [stage(r) for r in found], pretrain=pretrain, pretrain_stage="pretrain@backbone"
    )


@pytest.fixture
def ledger_file(tmp_path) -> Path:
    reports = write_reports(tmp_path / "reports")
    path = reports / "ledger.json"
    path.write_text(json.dumps(ledger_of(reports)))
    return path


def edit(reports: Path, dataset: str, name: str, seed: int, **changes) -> None:
    path = next(reports.glob(f"datasets/{dataset}/*/{name}/seed{seed}.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def check(capsys, run_dir: Path, ledger: Path) -> tuple[int, str, str]:
    status = main(["ledger", "check", str(run_dir), "--ledger", str(ledger)])
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------------------------------
# the ledger


def test_a_row_per_published_number_with_its_seeds_paper_value_and_commands(tmp_path):
    ledger = ledger_of(write_reports(tmp_path))
    rows = {(r["dataset"], r["model"]): r for r in ledger["rows"]}
    assert set(rows) == {(d, m) for d, m, _ in TOP1}
    vit = rows["synthetic_fg", "vit"]
    assert (vit["table"], vit["top1_mean"], vit["top1_std"]) == ("Table 4", 72.0, 2.0)
    assert vit["seeds"] == [1, 10, 100]
    assert vit["paper"] is None  # the generated dataset has no published number
    assert rows["cub", "glsim"]["paper"]["top1_mean"] == 90.93  # Table 4, GLSim on CUB
    assert rows["synthetic_fg", "glsim_random_no_aggregator"]["table"] == "ablation"
    assert rows["synthetic_fg", "glsim_random_no_aggregator"]["paper"] is None
    seed10 = vit["runs"][1]
    assert seed10 == {"seed": 10, "top1": 72.0, **record("synthetic_fg", "vit", 10),
                      "stage": "evaluate@synthetic_fg-vit-10",
                      "command": "dvc repro evaluate@synthetic_fg-vit-10"}  # fmt: skip
    assert ledger["pretrain"]["command"] == "dvc repro pretrain@backbone"
    assert ledger["pretrain"]["value"] == 79.0 and ledger["pretrain"]["host"] == EPYC


def test_ledger_md_names_hosts_once_and_every_number_with_its_command(tmp_path):
    reports = write_reports(tmp_path)
    edit(reports, "cub", "glsim", 100, host=XEON, numerics="portable")
    md = render_ledger(ledger_of(reports))
    assert "| H1 | AMD EPYC 9R14 [avx2,fma,avx512f,avx512_bf16] torch 2.14.1" in md
    assert "| H2 | Intel Xeon Platinum 8488C [" in md and "amx_bf16" in md
    assert (
        "| Table 4 | cub | glsim | 91.00 ± 1.00 | 1, 10, 100 | 90.93 ± 0.24 | native, portable "
        "| H1, H2 | `dvc repro aggregate` |"
    ) in md
    short = digest("synthetic_fg", "vit", 10)[:12]
    assert f"| synthetic_fg | vit | 10 | 72.00 | `{short}` | `key-synthetic_fg-vit-10` |" in md
    assert "`dvc repro evaluate@synthetic_fg-vit-10` |" in md
    assert "| upstream test top-1 (%) | 79.00 | native | H1 | `bbbbbbbbbbbb`" in md


def test_ledger_table_has_a_row_per_seed_and_the_backbone(tmp_path):
    table = ledger_table(ledger_of(write_reports(tmp_path)))
    assert len(table["seed"]) == 1 + 3 * len(TOP1)
    assert len({len(column) for column in table.values()}) == 1  # every column as long
    i = table["dataset"].index("cub")
    assert (table["paper_top1_mean"][i], table["top1_std"][i]) == (90.93, 1.0)


# ---------------------------------------------------------------------------------------
# glsim ledger check


def test_an_identical_reports_folder_is_the_same(ledger_file, tmp_path, capsys):
    other = shutil.copytree(ledger_file.parent, tmp_path / "other")
    status, out, _ = check(capsys, other, ledger_file)
    assert status == 0
    short = digest("synthetic_fg", "vit", 10)[:12]
    assert f"synthetic_fg/vit seed 10: same (weights {short})" in out
    assert out.strip().endswith("13 same, 0 within seed noise, 0 different")


def test_within_seed_noise_says_why_the_bits_differ(ledger_file, tmp_path, capsys):
    other = shutil.copytree(ledger_file.parent, tmp_path / "other")
    # another CPU generation under native: other bits, top-1 inside the row's std (2.0)
    edit(other, "synthetic_fg", "vit", 10, top1=73.5, weights_sha256="c" * 64,
         host={**EPYC, "isa_flags": [*EPYC["isa_flags"], "amx_tile"]})  # fmt: skip
    status, out, _ = check(capsys, other, ledger_file)
    assert status == 0
    assert (
        "synthetic_fg/vit seed 10: within seed noise (top-1 73.50, ledger 72.00: |diff| 1.50 "
        "<= std 2.00)\n    why: host differs: instruction sets +amx_tile"
    ) in out
    assert "12 same, 1 within seed noise, 0 different" in out


def test_another_host_is_named_cpu_isa_and_libraries(ledger_file, tmp_path, capsys):
    other = shutil.copytree(ledger_file.parent, tmp_path / "other")
    host = {**XEON, "torch": "2.15.0"}
    edit(other, "synthetic_fg", "glsim", 1, top1=78.0, weights_sha256="d" * 64, host=host)
    status, out, _ = check(capsys, other, ledger_file)
    assert status == 1
    line = next(x for x in out.splitlines() if x.startswith("synthetic_fg/glsim seed 1:"))
    assert line.endswith(": different (top-1 78.00, ledger 80.00: |diff| 2.00 > std 0.50)")
    assert (
        "    why: host differs: CPU model 'Intel Xeon Platinum 8488C', ledger 'AMD EPYC 9R14'; "
        "instruction sets +amx_bf16 +amx_tile; library versions: torch 2.15.0, ledger 2.14.1"
    ) in out
    assert "run key differs" not in out  # the same experiment, on other hardware


def test_another_profile_is_named(ledger_file, tmp_path, capsys):
    other = shutil.copytree(ledger_file.parent, tmp_path / "other")
    edit(other, "synthetic_fg", "glsim_random_no_aggregator", 10, top1=75.25, weights_sha256="e" * 64,
         numerics="portable", run_key="key-portable")  # fmt: skip
    status, out, _ = check(capsys, other, ledger_file)
    assert status == 1  # a row of equal seeds (std 0) allows no difference
    assert "synthetic_fg/glsim_random_no_aggregator seed 10: different" in out
    assert "why: numerics profile differs: portable, ledger native" in out
    assert "here the numerics profile differs)" in out  # the profile is in the run key


def test_another_backbone_shows_in_every_run_key(ledger_file, tmp_path, capsys):
    other = shutil.copytree(ledger_file.parent, tmp_path / "other")
    pretrain = json.loads((other / "pretrain.json").read_text())
    pretrain.update(upstream_test_acc=79.79, weights_sha256="f" * 64, host=XEON)
    (other / "pretrain.json").write_text(json.dumps(pretrain))
    edit(other, "cub", "glsim", 1, run_key="key-new", weights_sha256="a" * 64, top1=90.5)
    status, out, _ = check(capsys, other, ledger_file)
    assert status == 1
    assert "pretrained backbone (upstream test top-1): different (top-1 79.79, ledger 79.00" in out
    assert (
        "cub/glsim seed 1: within seed noise (top-1 90.50, ledger 90.00: |diff| 0.50 <= std 1.00)"
        "\n    why: run key differs: key-new, ledger key-cub-glsim-1 (it hashes the code, params, "
        "data, backbone weights and numerics profile; here the pretrained backbone differs)"
    ) in out


def test_runs_and_run_folders_compare_by_digest(ledger_file, tmp_path, capsys):
    runs = tmp_path / "runs"
    for name, parent in (("vit", "synthetic_fg/vit"), ("glsim_random_no_aggregator",
                         "synthetic_fg/ablation/glsim_random_no_aggregator")):  # fmt: skip
        for seed in SEEDS:
            folder = runs / parent / f"seed{seed}"
            folder.mkdir(parents=True)
            summary = {"epochs_done": 2, "history": [], **record("synthetic_fg", name, seed)}
            (folder / "train.json").write_text(json.dumps(summary))
    (runs / "synthetic_fg/lrsearch/vit/lr0.01/seed1").mkdir(parents=True)  # publishes nothing
    status, out, _ = check(capsys, runs, ledger_file)
    assert status == 0 and "6 same, 0 within seed noise, 0 different; 7 of the ledger's" in out

    one = runs / "synthetic_fg/vit/seed10"
    summary = json.loads((one / "train.json").read_text())
    (one / "train.json").write_text(json.dumps({**summary, "weights_sha256": "0" * 64}))
    status, out, _ = check(capsys, one, ledger_file)
    assert status == 1  # a run folder has no test top-1: same or different
    assert "synthetic_fg/vit seed 10: different (no top-1 in a run folder; ledger 72.00)" in out
    assert "why: same run key, profile and host, yet other bits" in out


def test_run_folder_names_follow_the_runs_layout():
    assert run_folder_key(Path("runs/cub/glsim/seed1")) == ("cub", "glsim", 1)
    assert run_folder_key(Path("runs/cub/ablation/no_agg/seed10")) == ("cub", "no_agg", 10)
    assert run_folder_key(Path("runs/cub/lrsearch/vit/lr0.01/seed0")) is None


@pytest.mark.parametrize("what", ["missing", "empty", "no ledger", "malformed"])
def test_bad_input_is_one_line_and_exit_2(what, ledger_file, tmp_path, capsys):
    run_dir, ledger = tmp_path / "other", ledger_file
    if what == "empty":
        run_dir.mkdir()
    if what == "no ledger":
        run_dir, ledger = ledger_file.parent, tmp_path / "nowhere.json"
    if what == "malformed":
        shutil.copytree(ledger_file.parent, run_dir)
        edit(run_dir, "synthetic_fg", "vit", 1, top1="n/a")
    status, out, err = check(capsys, run_dir, ledger)
    assert status == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    expected = {"missing": "no such folder", "empty": "neither a reports folder",
                "no ledger": "no ledger at", "malformed": "seed1.json: not a glsim report"}[what]  # fmt: skip
    assert expected in err
