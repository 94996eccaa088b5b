"""``glsim.progress``: a bar on a terminal (or ``GLSIM_PROGRESS=1``), the loop's own iterable
untouched otherwise (or with ``GLSIM_PROGRESS=0``), and the bars of the stages that use it."""

from __future__ import annotations

import sys
import tarfile
import zipfile

import pytest
from tqdm import tqdm

from glsim.data.extract import extract_archive
from glsim.inference import progress_bar
from glsim.progress import ENV_VAR, progress, progress_enabled, set_postfix


def terminal(monkeypatch, is_tty: bool) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: is_tty)


@pytest.mark.parametrize(
    "is_tty, env, shown",
    [(True, None, True), (False, None, False), (False, "1", True), (True, "0", False),
     (True, "", True), (False, "yes", False)],
)  # fmt: skip
def test_bars_follow_the_terminal_unless_forced(monkeypatch, is_tty, env, shown):
    terminal(monkeypatch, is_tty)
    if env is not None:
        monkeypatch.setenv(ENV_VAR, env)
    assert progress_enabled() is shown


def test_off_the_terminal_the_iterable_comes_back_unchanged(monkeypatch):
    terminal(monkeypatch, False)
    items = iter([1, 2, 3])
    assert progress(items, total=3, desc="x", unit="step") is items
    assert progress(total=3) is None  # a manual bar: None, the caller checks
    set_postfix(items, loss="1.0")  # a no-op on a plain iterable


def test_on_a_terminal_a_bar_counts_what_the_loop_yields(monkeypatch, capsys):
    terminal(monkeypatch, True)
    bar = progress([10, 20, 30], desc="epoch 1/2", unit="step")
    assert isinstance(bar, tqdm)
    seen = []
    for item in bar:
        seen.append(item)
        set_postfix(bar, loss="0.5000")
    assert seen == [10, 20, 30] and bar.n == 3 and bar.postfix == "loss=0.5000"
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "step/s" in err  # rate (and ETA) on stderr
    assert progress([1], disable=True) == [1]  # e.g. every rank but 0


def test_predict_bar_only_for_a_walked_folder_and_only_when_bars_are_on(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "1")
    bar = progress_bar(5, folder=True)
    assert isinstance(bar, tqdm) and bar.total == 5
    bar.close()
    assert progress_bar(5, folder=False) is None
    monkeypatch.setenv(ENV_VAR, "0")
    assert progress_bar(5, folder=True) is None


@pytest.mark.parametrize("kind", ["tar", "zip"])
@pytest.mark.parametrize("env", ["0", "1"])
def test_extraction_is_the_same_with_and_without_a_bar(tmp_path, monkeypatch, capsys, kind, env):
    monkeypatch.setenv(ENV_VAR, env)
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    for i in range(3):
        (src / "a" / "b" / f"{i}.txt").write_text(str(i))
    archive = tmp_path / f"data.{kind}"
    if kind == "tar":
        with tarfile.open(archive, "w") as tar:
            tar.add(src / "a", arcname="a")
    else:
        with zipfile.ZipFile(archive, "w") as zf:
            for i in range(3):
                zf.write(src / "a" / "b" / f"{i}.txt", f"a/b/{i}.txt")
    dest = extract_archive(archive, tmp_path / "out")
    assert sorted(p.read_text() for p in (dest / "a" / "b").iterdir()) == ["0", "1", "2"]
    err = capsys.readouterr().err
    assert ("extract data" in err) == (env == "1")
