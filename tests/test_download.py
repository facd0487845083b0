"""HTTP download: resume after a dropped connection or a killed run, retries, checksum verification."""

from __future__ import annotations

import hashlib
import os

import pytest
from corpus_fixtures import FileServer

from slam_core.corpora.download import ChecksumMismatchError, DownloadError, download_file, file_digest

PAYLOAD = os.urandom(200_000)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture()
def server():
    with FileServer({"data.tar.gz": PAYLOAD}, drop_after=50_000) as srv:
        yield srv


def test_download_verifies_and_skips_a_verified_copy(server, tmp_path):
    dest = download_file(f"{server.base}/files/data.tar.gz", tmp_path / "data.tar.gz", sha256=SHA256)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "data.tar.gz.part").exists()
    n_requests = len(server.requests)
    download_file(f"{server.base}/files/data.tar.gz", dest, sha256=SHA256)
    assert len(server.requests) == n_requests  # nothing re-downloaded


def test_dropped_connection_is_resumed_with_range(server, tmp_path):
    dest = download_file(f"{server.base}/drop/data.tar.gz", tmp_path / "d.bin", md5=MD5, backoff_s=0.01)
    assert dest.read_bytes() == PAYLOAD
    ranges = [r for path, r in server.requests if path == "/drop/data.tar.gz"]
    assert ranges[0] is None and ranges[1] == "bytes=50000-"  # second request continues where the first stopped


def test_killed_download_continues_from_part_file(server, tmp_path):
    dest = tmp_path / "data.tar.gz"
    (tmp_path / "data.tar.gz.part").write_bytes(PAYLOAD[:123_456])  # what a killed run left behind
    download_file(f"{server.base}/files/data.tar.gz", dest, sha256=SHA256)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/files/data.tar.gz", "bytes=123456-")]


def test_complete_part_file_is_finished_without_refetching(server, tmp_path):
    (tmp_path / "x.part").write_bytes(PAYLOAD)  # killed after the last byte, before the rename
    dest = download_file(f"{server.base}/files/data.tar.gz", tmp_path / "x", sha256=SHA256)
    assert dest.read_bytes() == PAYLOAD and server.requests == [("/files/data.tar.gz", f"bytes={len(PAYLOAD)}-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    (tmp_path / "y.part").write_bytes(b"stale bytes from elsewhere")
    dest = download_file(f"{server.base}/norange/data.tar.gz", tmp_path / "y", sha256=SHA256)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_redownloads_once_then_names_file_and_hashes(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatchError) as err:
        download_file(f"{server.base}/files/data.tar.gz", tmp_path / "bad.tar.gz", sha256=wrong)
    message = str(err.value)
    assert "bad.tar.gz" in message and wrong in message and SHA256 in message
    assert server.hits["/files/data.tar.gz"] == 2  # one fresh re-download, then fail
    assert not (tmp_path / "bad.tar.gz").exists() and not (tmp_path / "bad.tar.gz.part").exists()


def test_corrupt_existing_file_is_replaced(server, tmp_path):
    dest = tmp_path / "data.tar.gz"
    dest.write_bytes(b"corrupted")
    download_file(f"{server.base}/files/data.tar.gz", dest, md5=MD5)
    assert file_digest(dest, "md5") == MD5


def test_missing_file_fails_fast_without_retries(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server.base}/files/nope.tar.gz", tmp_path / "nope.tar.gz", retries=3, backoff_s=0.01)
    assert server.hits["/files/nope.tar.gz"] == 1


def test_unreachable_server_gives_clear_error_after_retries(tmp_path):
    with FileServer({}) as srv:
        url = f"{srv.base}/files/a.tar"
    with pytest.raises(DownloadError, match="failed after 3 attempts"):
        download_file(url, tmp_path / "a.tar", retries=2, backoff_s=0.01, timeout_s=2)


@pytest.mark.parametrize("error, retried", [
    (ChecksumMismatchError("x.tar", "sha256", "aa", "bb"), False),
    (FileNotFoundError("no such local copy"), False),
    (DownloadError("http://x: failed after 6 attempts (timed out)"), True),
    (TimeoutError("read timed out"), True),
])
def test_archive_tasks_retry_network_trouble_not_bad_files(error, retried):
    from prefect.states import Failed

    from tasks.corpora import NETWORK

    assert NETWORK["retry_condition_fn"](None, None, Failed(data=error)) is retried
