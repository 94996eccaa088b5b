"""Safe extraction: members escaping the target folder are refused, by name."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from glsim.data.extract import UnsafeArchiveError, extract_archive, is_extracted


def _tar(path, members):
    """members: (name, kind, payload_or_linkname)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = value
                tar.addfile(info)
    return path


def test_extracts_and_marks_done(tmp_path):
    archive = _tar(
        tmp_path / "a.tar.gz", [("top/x.txt", "file", b"x"), ("top/sub/y.txt", "file", b"y")]
    )
    dest = tmp_path / "out"
    extract_archive(archive, dest)
    assert (dest / "top/x.txt").read_bytes() == b"x"
    assert (dest / "top/sub/y.txt").read_bytes() == b"y"
    assert is_extracted(archive, dest)
    assert not list(dest.glob(".partial-*"))


def test_two_archives_share_a_top_folder(tmp_path):
    a = _tar(tmp_path / "a.tar.gz", [("top/a.txt", "file", b"a")])
    b = _tar(tmp_path / "b.tar.gz", [("top/b.txt", "file", b"b")])
    dest = tmp_path / "out"
    extract_archive(a, dest)
    extract_archive(b, dest)
    assert sorted(p.name for p in (dest / "top").iterdir()) == ["a.txt", "b.txt"]


def test_internal_symlink_is_allowed(tmp_path):
    archive = _tar(
        tmp_path / "a.tar.gz", [("top/x.txt", "file", b"x"), ("top/link", "sym", "x.txt")]
    )
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out/top/link").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("member", "kind", "value"),
    [
        ("../evil.txt", "file", b"evil"),
        ("top/../../evil.txt", "file", b"evil"),
        ("/tmp/glsim-evil.txt", "file", b"evil"),
        ("top/link", "sym", "../../evil.txt"),
        ("top/abs-link", "sym", "/etc/passwd"),
        ("top/hard", "hard", "../evil.txt"),
    ],
)
def test_refuses_members_escaping_the_target(tmp_path, member, kind, value):
    archive = _tar(tmp_path / "bad.tar.gz", [("top/ok.txt", "file", b"ok"), (member, kind, value)])
    dest = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchiveError, match="bad.tar.gz") as info:
        extract_archive(archive, dest)
    assert repr(member) in str(info.value), "the error must name the offending member"
    assert not (tmp_path / "deep" / "evil.txt").exists()
    assert not (dest / "top").exists(), "nothing is moved into place from a refused archive"
    assert not is_extracted(archive, dest)


def test_refuses_zip_traversal(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", b"ok")
        zf.writestr("../evil.txt", b"evil")
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./evil\.txt'"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_interrupted_staging_is_cleaned(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", [("top/x.txt", "file", b"x")])
    dest = tmp_path / "out"
    (dest / ".partial-a.tar.gz" / "junk").mkdir(parents=True)
    extract_archive(archive, dest)
    assert not (dest / ".partial-a.tar.gz").exists()
    assert (dest / "top/x.txt").exists()
