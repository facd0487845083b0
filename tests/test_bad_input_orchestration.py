"""The bad-input suite's orchestration cases (scripts/bad_input_orchestration.py) through the real flows: two runs
on one data root at once, a corrupt catalog file, a truncated units shard met by training, a full disk during a
shard write, a run stopped by SIGTERM. Each ends in one line (or nothing to say), loses nothing done, and the
next run recovers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_orchestration_mistakes_end_in_a_line_and_the_next_run_recovers(tmp_path):
    spec = importlib.util.spec_from_file_location("bad_input_orchestration",
                                                  REPO / "scripts" / "bad_input_orchestration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows, failures = module.run_orchestration(tmp_path)
    assert not failures, failures
    names = {r["input"] for r in rows}
    assert {"two runs on one data root at once", "catalog file overwritten with random bytes",
            "units shard truncated, met by training", "full disk during a shard write",
            "run stopped by SIGTERM"} <= names
    assert len(rows) == 9 and all(r["ok"] for r in rows)
