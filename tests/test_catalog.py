import os
import subprocess
import sys
import textwrap
import threading

import pytest

from data_catalog import Artifact, Catalog, produce_or_reuse
from slam_core.atomic import atomic_path, write_text_atomic


def test_crash_between_write_and_record_leaves_no_row(tmp_path):
    """A process killed after the atomic write but before the catalog insert: file may exist, no row."""
    db, out = tmp_path / "catalog.duckdb", tmp_path / "units" / "units-00000.parquet"
    script = textwrap.dedent(f"""
        import os
        from data_catalog import Catalog, produce_or_reuse
        from slam_core.atomic import write_bytes_atomic
        cat = Catalog({str(db)!r})
        def produce():
            write_bytes_atomic({str(out)!r}, b"complete shard")
            os._exit(9)  # hard crash: no exception handling, no cleanup
        produce_or_reuse(cat, stage="units", dataset="d", split="train", out_path={str(out)!r},
                         fingerprint="fp1", produce=produce)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd())
    assert proc.returncode == 9
    cat = Catalog(db)
    assert cat.artifacts() == []
    assert cat.find_artifact(out, "fp1") is None
    # the resumed run produces (again) and records exactly one row
    calls = []

    def produce():
        calls.append(1)
        write_text_atomic(out, "complete shard")
        return {"rows": 1, "tokens": 7, "audio_seconds": 1.5}

    first = produce_or_reuse(cat, stage="units", dataset="d", split="train", out_path=out, fingerprint="fp1",
                             produce=produce)
    again = produce_or_reuse(cat, stage="units", dataset="d", split="train", out_path=out, fingerprint="fp1",
                             produce=produce)
    assert calls == [1] and not first["reused"] and again["reused"] and again["tokens"] == 7
    assert len(cat.artifacts()) == 1
    assert cat.find_artifact(out, "fp1")["bytes"] == len("complete shard")  # the size an audit checks files by


def test_failed_atomic_write_leaves_no_file(tmp_path):
    target = tmp_path / "shard.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_record_refuses_missing_file_and_quarantine_is_counted(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    with pytest.raises(FileNotFoundError):
        cat.record_artifact(Artifact("units", "d", "train", str(tmp_path / "missing"), "fp"))
    out = tmp_path / "seg.parquet"

    def produce():
        write_text_atomic(out, "x")
        return {"rows": 2, "bad": [("a.flac", "empty", "zero frames"), ("b.flac", "unreadable", "garbage")]}

    res = produce_or_reuse(cat, stage="segments", dataset="d", split="train", out_path=out, fingerprint="f",
                           produce=produce)
    assert len(res["bad"]) == 2
    assert {r["reason"] for r in cat.quarantined("segments")} == {"empty", "unreadable"}
    assert cat.summary()["quarantine"] == [{"stage": "segments", "reason": "empty", "files": 1},
                                           {"stage": "segments", "reason": "unreadable", "files": 1}]


def test_concurrent_writers_in_threads(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")

    def record(i):
        cat.record_eval("run", f"ckpt{i}", "tsc_like", 0.5 + i / 100, 10)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cat.eval_results(run="run")) == 8


def test_summary_hours_and_tokens(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    for i in range(2):
        p = tmp_path / f"u{i}"
        p.write_text("x")
        cat.record_artifact(Artifact("units", "stories", "train", str(p), "fp", rows=3, tokens=100, audio_seconds=1800))
    (row,) = cat.summary()["data"]
    assert (row["shards"], row["tokens"], row["hours"]) == (2, 200, 1.0)


def test_has_fingerprint_requires_the_file_or_an_eval_row(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    f = tmp_path / "shard.parquet"
    f.write_text("x")
    cat.record_artifact(Artifact("units", "d", "train", str(f), "fp-a"))
    assert cat.has_fingerprint("fp-a") and not cat.has_fingerprint("fp-b")
    f.unlink()  # a deleted output no longer counts as done (no stale cache hit)
    assert not cat.has_fingerprint("fp-a")
    cat.record_eval("run", "ckpt", "tsc_like", 0.6, 10, details={"fingerprint": "fp-e"})
    assert cat.has_fingerprint("fp-e")
