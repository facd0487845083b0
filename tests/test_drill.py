"""The kill drill's own logic (scripts/kill_drill.py): kill points cover every stage, and its catalog audit
catches each way a catalog can lie. The full drill is `make drill` (minutes); tests/test_kill_resume.py is the
kill -9 proof that runs in CI."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from data_catalog import Artifact, Catalog

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("kill_drill", REPO / "scripts" / "kill_drill.py")
drill = importlib.util.module_from_spec(spec)
sys.modules["kill_drill"] = drill  # dataclasses look their module up by name
spec.loader.exec_module(drill)


def test_kills_are_spread_over_every_stage_and_seeded():
    plan = drill.stages(40, 24)
    names = [s.name for s in plan]
    kills = drill.plan_kills(20, seed=3, plan=plan)
    assert len(kills) == 20 and {k.target for k in kills} == set(names)  # every stage is hit
    assert [names.index(k.target) for k in kills] == sorted(names.index(k.target) for k in kills)  # in run order
    assert all(0.1 <= k.fraction <= 0.9 for k in kills)
    assert [(k.target, k.fraction) for k in kills] == [(k.target, k.fraction) for k in drill.plan_kills(20, 3, plan)]
    assert [(k.target, k.fraction) for k in kills] != [(k.target, k.fraction) for k in drill.plan_kills(20, 4, plan)]


def test_few_kills_go_to_the_longest_stages():
    plan = drill.stages(40, 24)
    windows = {s.name: 1.0 for s in plan} | {"pretrain": 99.0, "dpo": 42.0, "units": 30.0}
    assert {k.target for k in drill.plan_kills(3, seed=0, plan=plan, windows_s=windows)} == {"pretrain", "dpo", "units"}


def test_drill_config_caps_training_by_steps():
    from slam_core.config import apply_overrides
    from slam_core.presets import get_preset

    cfg = apply_overrides(get_preset("smoke"), drill.DRILL_CONFIG)
    assert cfg.train.max_steps and cfg.train.budget_s > 100 * cfg.train.max_steps  # the cap binds, not the clock
    assert cfg.dpo.max_steps and cfg.dpo.budget_s > 100 * cfg.dpo.max_steps


def test_stage_outputs_ignore_hidden_temporaries(tmp_path):
    seg = tmp_path / "segments" / "stories" / "train"
    seg.mkdir(parents=True)
    (seg / "segments-00000.parquet").write_bytes(b"x")
    (seg / ".segments-00001.parquet.abc.tmp").write_bytes(b"half")
    stage = next(s for s in drill.stages(40, 24) if s.name == "segments")
    assert [p.name for p in drill.outputs(tmp_path, stage)] == ["segments-00000.parquet"]
    assert [p.name for p in drill.stray_temp_files(tmp_path)] == [".segments-00001.parquet.abc.tmp"]


def test_catalog_audit_finds_missing_resized_and_duplicated_outputs(tmp_path):
    catalog = Catalog(tmp_path / "catalog.duckdb")
    ok, resized, gone = tmp_path / "ok.bin", tmp_path / "resized.bin", tmp_path / "gone.bin"
    for path in (ok, resized, gone):
        path.write_bytes(b"12345")
    catalog.record_artifact(Artifact("units", "d", "t", str(ok), "fp-ok"))
    catalog.record_artifact(Artifact("units", "d", "t", str(resized), "fp-r"))
    catalog.record_artifact(Artifact("units", "d", "t", str(gone), "fp-g"))
    assert drill.catalog_problems(tmp_path) == []
    resized.write_bytes(b"123")  # truncated after it was recorded
    gone.unlink()
    catalog.record_artifact(Artifact("units", "d", "t", str(ok), "fp-other"))  # one path, two fingerprints
    problems = "\n".join(drill.catalog_problems(tmp_path))
    assert "size differs" in problems and "resized.bin" in problems
    assert "recorded but missing" in problems and "gone.bin" in problems
    assert "one path, several fingerprints" in problems


@pytest.mark.slow
def test_two_kill_drill_end_to_end(tmp_path):
    """Two SIGKILLs (in the two longest stages) on a very small step-capped run: the run recovers and its unit
    shards, weights and eval results equal the uninterrupted run's byte for byte."""
    out = tmp_path / "figures.json"
    small = ["corpus.n_train_stories=16", "corpus.n_heldout_stories=8", "corpus.n_swag_train=4",
             "corpus.n_swag_heldout=8", "train.max_steps=12", "dpo.max_steps=6", "eval.n_generate=1"]
    rc = drill.main(["--kills", "2", "--seed", "0", "--workdir", str(tmp_path / "w"), "--json", str(out),
                     "--timeout-s", "900"] + [a for s in small for a in ("--set", s)])
    figures = json.loads(out.read_text())
    assert rc == 0 and figures["ok"], figures
    assert figures["kills_delivered"] == 2 and figures["recoveries"] == 2
    assert figures["files_identical"] == figures["files_compared"] >= 9
    assert figures["committed_shards_redone"] == 0 and figures["catalog_problems"] == []
