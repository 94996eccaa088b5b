"""Resumable download: resume from a .part, resume after a dropped connection, checksum errors."""

from __future__ import annotations

import hashlib
import json

import pytest

from glsim.data.download import ChecksumError, Checksums, DownloadError, download_file, is_verified

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not a multiple of the chunk boundary issues
SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_download_verifies_and_is_not_repeated(file_server, tmp_path):
    file_server.files["a.bin"] = PAYLOAD
    dest = download_file(
        file_server.url("a.bin"), tmp_path / "a.bin", Checksums(sha256=SHA, md5=MD5)
    )
    assert dest.read_bytes() == PAYLOAD
    stamp = json.loads((tmp_path / "a.bin.verified.json").read_text())
    assert stamp["sha256"] == SHA and stamp["size"] == len(PAYLOAD)
    assert not (tmp_path / "a.bin.part").exists()
    assert is_verified(dest, Checksums(sha256=SHA))

    download_file(file_server.url("a.bin"), dest, Checksums(sha256=SHA))
    assert file_server.count("a.bin") == 1, "a verified file must not be downloaded again"


def test_records_sha256_when_none_is_published(file_server, tmp_path):
    file_server.files["a.bin"] = PAYLOAD
    download_file(file_server.url("a.bin"), tmp_path / "a.bin")
    assert json.loads((tmp_path / "a.bin.verified.json").read_text())["sha256"] == SHA


def test_resumes_a_partial_file_with_range(file_server, tmp_path):
    file_server.files["a.bin"] = PAYLOAD
    half = len(PAYLOAD) // 2 + 123
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:half])
    download_file(file_server.url("a.bin"), tmp_path / "a.bin", Checksums(sha256=SHA))
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert file_server.requests == [("a.bin", f"bytes={half}-")]


def test_resumes_after_connection_dropped_mid_body(file_server, tmp_path):
    file_server.files["a.bin"] = PAYLOAD
    file_server.drop_after["a.bin"] = [300_000, 200_000]
    download_file(file_server.url("a.bin"), tmp_path / "a.bin", Checksums(sha256=SHA), backoff=0)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    ranges = [r for n, r in file_server.requests if n == "a.bin"]
    assert len(ranges) == 3 and ranges[0] is None
    offsets = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:]]
    # Each retry resumes from what was kept (at most the bytes the server sent so far).
    assert 0 < offsets[0] <= 300_000 < offsets[1] <= 500_000


def test_server_ignoring_range_restarts_cleanly(file_server, tmp_path):
    file_server.files["a.bin"] = PAYLOAD
    file_server.ignore_range.add("a.bin")
    (tmp_path / "a.bin.part").write_bytes(b"garbage that must not be kept")
    download_file(file_server.url("a.bin"), tmp_path / "a.bin", Checksums(sha256=SHA))
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_complete_part_file_is_finished_without_refetch(file_server, tmp_path):
    file_server.files["a.bin"] = PAYLOAD
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD)
    download_file(file_server.url("a.bin"), tmp_path / "a.bin", Checksums(md5=MD5))
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_keeps_file_aside(file_server, tmp_path):
    file_server.files["a.bin"] = PAYLOAD
    with pytest.raises(ChecksumError, match=r"a\.bin.*sha256.*expected 0+") as info:
        download_file(file_server.url("a.bin"), tmp_path / "a.bin", Checksums(sha256="0" * 64))
    assert "a.bin.corrupt" in str(info.value)
    assert not (tmp_path / "a.bin").exists(), "a corrupt file must not be left where it is used"
    assert (tmp_path / "a.bin.corrupt").read_bytes() == PAYLOAD
    # The same bad bytes served again on a retry are not kept twice...
    with pytest.raises(ChecksumError, match=r"a\.bin\.corrupt\b"):
        download_file(file_server.url("a.bin"), tmp_path / "a.bin", Checksums(md5="f" * 32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin.corrupt"]
    # ...but different bad bytes do not overwrite the first copy kept aside.
    file_server.files["a.bin"] = PAYLOAD[:-1] + b"!"
    with pytest.raises(ChecksumError):
        download_file(file_server.url("a.bin"), tmp_path / "a.bin", Checksums(md5="f" * 32))
    assert (tmp_path / "a.bin.corrupt").read_bytes() == PAYLOAD
    assert (tmp_path / "a.bin.corrupt.1").read_bytes() == PAYLOAD[:-1] + b"!"


def test_existing_file_that_changed_is_caught(file_server, tmp_path):
    file_server.files["a.bin"] = PAYLOAD
    dest = download_file(file_server.url("a.bin"), tmp_path / "a.bin", Checksums(sha256=SHA))
    dest.write_bytes(PAYLOAD[:-1] + b"x")  # silently damaged on disk
    with pytest.raises(ChecksumError):
        download_file(file_server.url("a.bin"), dest, Checksums(sha256=SHA))


def test_http_error_names_url_and_does_not_retry(file_server, tmp_path):
    with pytest.raises(DownloadError, match=r"missing\.bin.*404"):
        download_file(file_server.url("missing.bin"), tmp_path / "m.bin", backoff=0)
    assert file_server.count("missing.bin") == 1


def test_gives_up_after_retries_and_keeps_the_part(file_server, tmp_path):
    file_server.files["a.bin"] = PAYLOAD
    file_server.drop_after["a.bin"] = [100_000, 100_000, 100_000]
    with pytest.raises(DownloadError, match=r"3 attempts.*bytes are kept in .*a\.bin\.part"):
        download_file(file_server.url("a.bin"), tmp_path / "a.bin", retries=2, backoff=0)
    kept = (tmp_path / "a.bin.part").read_bytes()
    assert 200_000 < len(kept) <= 300_000 and kept == PAYLOAD[: len(kept)]
    # The next run resumes from there.
    download_file(file_server.url("a.bin"), tmp_path / "a.bin", Checksums(sha256=SHA), backoff=0)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
