"""Two runs on one data root: per-output locks make the second wait and reuse; catalog writes are atomic."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from data_catalog import Artifact, Catalog, produce_or_reuse
from data_catalog.locks import lock_path, output_lock

REPO = Path(__file__).resolve().parents[1]

# One "run": waits for the go file, then produces the shared shard slowly (so the other run arrives mid-way).
WORKER = r"""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from data_catalog import Catalog, produce_or_reuse
from slam_core.atomic import write_text_atomic
root, go, name = Path({root!r}), Path({go!r}), sys.argv[1]
(root / f"ready-{{name}}").touch()
while not go.exists():
    time.sleep(0.01)
def produce():
    with open(root / "produced.log", "a") as fh:
        fh.write(name + "\n")
    time.sleep(1.5)
    write_text_atomic(root / "shard.txt", "the shard\n")
    return {{"rows": 7}}
res = produce_or_reuse(Catalog(root / "catalog.duckdb"), stage="units", dataset="d", split="train",
                       out_path=root / "shard.txt", fingerprint="fp-1", produce=produce)
print("RESULT " + json.dumps(res))
"""


def test_two_processes_same_shard_one_produces_one_reuses(tmp_path):
    root, go = tmp_path / "root", tmp_path / "go"
    root.mkdir()
    Catalog(root / "catalog.duckdb")  # schema first, so neither worker races on CREATE TABLE
    code = WORKER.format(repo=str(REPO), root=str(root), go=str(go))
    procs = [subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for name in ("a", "b")]
    deadline = time.monotonic() + 120  # both imported and waiting, however slow the machine is
    while not all((root / f"ready-{name}").exists() for name in ("a", "b")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a worker did not start"
        time.sleep(0.05)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:]))
    assert (root / "produced.log").read_text().count("\n") == 1  # produced once
    assert sorted(r["reused"] for r in results) == [False, True]
    waiter = next(r for r in results if r["reused"])
    assert waiter["waited_s"] > 0.5 and waiter["rows"] == 7  # it waited for the producer, then took its row
    rows = Catalog(root / "catalog.duckdb").artifacts()
    assert [(r["path"], r["fingerprint"]) for r in rows] == [(str(root / "shard.txt"), "fp-1")]


def test_threads_in_one_process_take_turns(tmp_path):
    catalog = Catalog(tmp_path / "catalog.duckdb")
    calls, results = [], []

    def produce():
        calls.append(1)
        time.sleep(0.3)
        (tmp_path / "out.txt").write_text("x")
        return {"rows": 1}

    def run():
        results.append(produce_or_reuse(catalog, stage="s", dataset="d", split="x", out_path=tmp_path / "out.txt",
                                        fingerprint="f", produce=produce))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sum(not r["reused"] for r in results) == 1


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    catalog = Catalog(tmp_path / "catalog.duckdb")
    out = tmp_path / "units" / "units-00000.parquet"
    out.parent.mkdir()
    (out.parent / f".{out.name}.abc123.tmp").write_bytes(b"half a shard")  # what kill -9 left
    (out.parent / ".other.parquet.zz.tmp").write_bytes(b"someone else's")  # not this output's: kept
    produce_or_reuse(catalog, stage="units", dataset="d", split="t", out_path=out, fingerprint="f",
                     produce=lambda: out.write_bytes(b"shard") and {"rows": 1})
    assert sorted(p.name for p in out.parent.iterdir()) == [".other.parquet.zz.tmp", out.name]


def test_lock_timeout_names_the_holder(tmp_path):
    out = tmp_path / "x.parquet"
    done = threading.Event()
    held = threading.Event()

    def hold():
        with output_lock(tmp_path, out):
            held.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    with pytest.raises(TimeoutError, match="pid"):
        with output_lock(tmp_path, out, timeout_s=0.3, report_every_s=0.1):
            pass
    done.set()
    t.join()
    assert lock_path(tmp_path, out).parent.name == ".locks"


def test_artifact_and_quarantine_rows_commit_together(tmp_path):
    catalog = Catalog(tmp_path / "catalog.duckdb")
    good = tmp_path / "good.parquet"
    good.write_bytes(b"x")
    catalog.record_output(Artifact("segments", "local", "train", str(good), "fp"),
                          [("segments", "local", "bad.flac", "unreadable", "junk", "fp")])
    assert len(catalog.artifacts()) == 1 and len(catalog.quarantined()) == 1
    with pytest.raises(FileNotFoundError):  # nothing is recorded for a missing output, not even the quarantine
        catalog.record_output(Artifact("segments", "local", "train", str(tmp_path / "gone"), "fp2"),
                              [("segments", "local", "b2.flac", "empty", "", "fp2")])
    assert len(catalog.quarantined()) == 1
