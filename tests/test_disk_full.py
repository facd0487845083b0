"""A full disk: a clear error naming the file, nothing half-written or recorded, finished work kept.

The disk is "filled" for real with RLIMIT_FSIZE in a child process: the kernel then fails writes past the
limit (EFBIG), exactly where a full disk fails them (ENOSPC), and both take the same path in slam_core.atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from corpus_fixtures import FileServer

REPO = Path(__file__).resolve().parents[1]

_PRELUDE = """
import json, resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed

def limit_file_size(n_bytes):
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, resource.RLIM_INFINITY))

def lift_limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
"""


def _run_child(body: str, *args: str) -> dict:
    script = _PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_stage_output_on_a_full_disk_is_not_recorded_and_the_rerun_succeeds(tmp_path):
    result = _run_child("""
        from data_catalog import Catalog, produce_or_reuse
        from slam_core.atomic import DiskFullError, write_bytes_atomic
        root = Path(sys.argv[1])
        catalog = Catalog(root / "catalog.duckdb")
        kept = produce_or_reuse(catalog, stage="units", dataset="d", split="train", out_path=root / "a.bin",
                                fingerprint="fa", produce=lambda: (write_bytes_atomic(root / "a.bin", b"x" * 1000), {"rows": 1})[1])
        catalog_bytes = (root / "catalog.duckdb").stat().st_size
        limit_file_size(max(catalog_bytes, 1 << 20) + (1 << 20))
        try:
            produce_or_reuse(catalog, stage="units", dataset="d", split="train", out_path=root / "b.bin",
                             fingerprint="fb", produce=lambda: (write_bytes_atomic(root / "b.bin", b"y" * (8 << 20)), {"rows": 1})[1])
            message = None
        except DiskFullError as err:
            message = str(err)
        lift_limit()
        leftovers = sorted(p.name for p in root.iterdir() if p.name.startswith(".b.bin"))
        recorded_b = catalog.find_artifact(root / "b.bin", "fb") is not None
        again = produce_or_reuse(catalog, stage="units", dataset="d", split="train", out_path=root / "b.bin",
                                 fingerprint="fb", produce=lambda: (write_bytes_atomic(root / "b.bin", b"y" * (8 << 20)), {"rows": 1})[1])
        reused_a = produce_or_reuse(catalog, stage="units", dataset="d", split="train", out_path=root / "a.bin",
                                    fingerprint="fa", produce=lambda: 1 / 0)["reused"]
        print(json.dumps({"message": message, "leftovers": leftovers,
                          "recorded_b": recorded_b, "b_size": (root / "b.bin").stat().st_size,
                          "again_reused": again["reused"], "reused_a": reused_a}))
    """, str(tmp_path))
    assert result["message"] is not None, "writing past the limit did not raise DiskFullError"
    assert "b.bin" in result["message"] and "File too large" in result["message"]
    assert "Nothing was recorded" in result["message"] and "GB free" in result["message"]
    assert result["leftovers"] == [] and result["recorded_b"] is False  # no temp file, no catalog row
    assert result["b_size"] == 8 << 20 and result["again_reused"] is False  # the rerun produced it whole
    assert result["reused_a"] is True  # work finished before the failure was kept


@pytest.fixture()
def server():
    payload = os.urandom(3 << 20)
    with FileServer({"big.tar": payload}) as srv:
        srv.payload = payload
        yield srv


def test_download_on_a_full_disk_stops_at_once_and_resumes_after(server, tmp_path):
    sha256 = hashlib.sha256(server.payload).hexdigest()
    result = _run_child("""
        from slam_core.atomic import DiskFullError
        from slam_core.corpora.download import download_file
        url, dest, sha256 = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
        limit_file_size(1 << 20)
        try:
            download_file(url, dest, sha256=sha256, retries=3, backoff_s=5.0)
            message = None
        except DiskFullError as err:
            message = str(err)
        part_bytes = dest.with_name(dest.name + ".part").stat().st_size
        lift_limit()
        download_file(url, dest, sha256=sha256)
        print(json.dumps({"message": message, "part_bytes": part_bytes}))
    """, f"{server.base}/files/big.tar", str(tmp_path / "big.tar"), sha256)
    assert result["message"] is not None and "big.tar.part" in result["message"]
    assert result["part_bytes"] == 1 << 20  # kept for the resume
    assert (tmp_path / "big.tar").read_bytes() == server.payload
    requests = [r for p, r in server.requests if p == "/files/big.tar"]
    assert requests == [None, f"bytes={1 << 20}-"]  # no retries on a full disk; the rerun resumed
