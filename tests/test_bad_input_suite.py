"""The bad-input suite (scripts/bad_input_suite.py) end to end, with a short long file (the 3-hour one is
`make drill`'s): every bad input is quarantined with its named reason, good input is unaffected."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _suite():
    spec = importlib.util.spec_from_file_location("bad_input_suite", REPO / "scripts" / "bad_input_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bad_input_suite_handles_every_case(tmp_path, monkeypatch):
    from slam_core.audio import vad

    # a 2-minute "long" file read in 50 s windows: the same windowed path a 3-hour file takes
    monkeypatch.setattr(vad, "LONG_FILE_WINDOW_S", 50.0)
    out = tmp_path / "figures.json"
    rc = _suite().main(["--workdir", str(tmp_path / "w"), "--long-hours", str(2 / 60), "--json", str(out),
                        "--no-orchestration"])  # tests/test_bad_input_orchestration.py runs those
    figures = json.loads(out.read_text())
    assert rc == 0, figures["failures"]
    handled = {r["input"]: r["handled_as"] for r in figures["rows"]}
    assert handled["zero-length file"] == "empty"
    assert handled["all-NaN samples"] == "non_finite"
    assert handled["random bytes named .flac"] == "unreadable"
    assert handled["truncated FLAC"] in {"truncated_or_corrupt", "unreadable"}
    assert handled["8 kHz stereo"] == "segmented"
    assert handled["checksum.tar.gz"] == "checksum_mismatch"
    assert handled["corrupt.tar.gz"] == "corrupt_archive"
    assert handled["traversal.tar"] == "unsafe_archive_member"
    assert handled["good.tar.gz"] == "extracted"
    assert handled["±3e38 float WAV, 8 kHz (resampled)"] == "out_of_range"
    assert handled["same stem: twin.wav"] == handled["same stem: twin.flac"] == "segmented"
    assert handled["shard holding unit 65535"] == "refused_at_commit"
    assert handled["--set trian.lr=3 (mistyped section)"] == "refused (exit 2)"
    assert handled["two configs, one output path"] == "redone, not served"
    assert handled["DPO reference lost, resumed"] == "from the initial model"
    assert figures["handled"] == figures["bad_inputs"] >= 40
    assert all(r["ok"] for r in figures["rows"])


def test_failure_reasons_are_named():
    from flows.data_sources import archive_failure_reason
    from slam_core.corpora.archive import ArchiveError
    from slam_core.corpora.download import ChecksumMismatchError, DownloadError

    assert archive_failure_reason(ChecksumMismatchError(Path("a"), "md5", "x", "y")) == "checksum_mismatch"
    assert archive_failure_reason(ArchiveError("a.tar", "path with '..' refused", "../x")) == "unsafe_archive_member"
    assert archive_failure_reason(ArchiveError("a.tar", "truncated or corrupt archive")) == "corrupt_archive"
    assert archive_failure_reason(DownloadError("http://x: HTTP 500")) == "download_failed"
    assert archive_failure_reason(KeyError("bug")) is None  # a bug is not bad input: it propagates
