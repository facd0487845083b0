"""Preflight: the run is refused before any work when the disk (or memory, or GPU) cannot hold it."""

from __future__ import annotations

import pytest

from slam_core import preflight as pf
from slam_core.config import apply_overrides
from slam_core.presets import get_preset


def _smoke(tmp_path, **extra):
    return apply_overrides(get_preset("smoke"), {"run.data_root": str(tmp_path / "root"), **extra})


def test_enough_resources_pass_and_report_estimates(tmp_path):
    needs = pf.preflight(_smoke(tmp_path))
    by = {n.resource: n for n in needs}
    assert set(by) == {"disk", "memory"} and all(n.ok for n in needs)
    assert 0.05 * pf.GB < by["disk"].needed < 5 * pf.GB  # smoke: a few hundred MB of FLAC + small checkpoints


def test_full_disk_is_refused_with_the_resource_need_and_override(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "free_disk_bytes", lambda path: 10 * 1024 ** 2)
    with pytest.raises(pf.PreflightError) as err:
        pf.preflight(_smoke(tmp_path))
    msg = str(err.value)
    assert "not enough disk" in msg and str(tmp_path / "root") in msg and "0.01 GB" in msg
    assert "synthetic speech" in msg and "run.skip_preflight=true" in msg and "--data-root" in msg


def test_skip_preflight_overrides(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "free_disk_bytes", lambda path: 0)
    assert pf.preflight(_smoke(tmp_path, **{"run.skip_preflight": True})) == []


def test_memory_and_gpu_shortfalls_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "available_memory_bytes", lambda: 256 * 1024 ** 2)
    with pytest.raises(pf.PreflightError, match="(?s)not enough memory.*kmeans_sample_frames"):
        pf.preflight(_smoke(tmp_path))
    monkeypatch.setattr(pf, "available_memory_bytes", lambda: 64 * pf.GB)
    monkeypatch.setattr(pf, "gpus", lambda: [])
    with pytest.raises(pf.PreflightError, match="not enough gpu: need about 1 .*available 0"):
        pf.preflight(_smoke(tmp_path, **{"run.device": "cuda", "parallel.n_gpus": 1}))
    monkeypatch.setattr(pf, "gpus", lambda: [2 * pf.GB])  # one small GPU for Qwen2.5-0.5B training
    cfg = apply_overrides(get_preset("slam"), {"run.data_root": str(tmp_path / "root")})
    monkeypatch.setattr(pf, "free_disk_bytes", lambda path: 10 ** 15)
    with pytest.raises(pf.PreflightError, match="not enough gpu_memory"):
        pf.preflight(cfg)


def test_recorded_outputs_count_as_done(tmp_path, monkeypatch):
    from data_catalog import Artifact, Catalog

    cfg = _smoke(tmp_path)
    need = sum(pf.estimate(cfg)["disk"].values())
    big = tmp_path / "root" / "synth.bin"
    big.parent.mkdir(parents=True)
    with big.open("wb") as f:  # sparse: the catalog checks that recorded rows match their files' sizes
        f.truncate(int(need))
    Catalog(tmp_path / "root" / "catalog.duckdb").record_artifact(
        Artifact("synth", "stories", "train", str(big), "fp", bytes=int(need)))
    monkeypatch.setattr(pf, "free_disk_bytes", lambda path: 1024)
    assert pf.preflight(cfg)[0].needed == 0  # a resumed run has nothing left to write


def test_prepare_flow_refuses_before_writing_anything(tmp_path, monkeypatch):
    from flows.prepare_data import prepare_data

    monkeypatch.setattr(pf, "free_disk_bytes", lambda path: 0)
    with pytest.raises(pf.PreflightError, match="not enough disk"):
        prepare_data.fn(preset="smoke", data_root=str(tmp_path / "root"))
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())


def test_sharded_speech_sets_are_measured_not_estimated(tmp_path):
    """With corpus.stinystories_dir / spokenswag_dir the speech hours come from the shards' bytes; both are read
    in place, so they add units but no FLAC to write."""
    root = tmp_path / "root"
    (root / "synth" / "st" / "train").mkdir(parents=True)
    (root / "synth" / "sw").mkdir(parents=True)
    (root / "synth" / "st" / "train" / "part-00000.parquet").write_bytes(b"\0" * 3_400_000)  # 200 s of FLAC
    (root / "synth" / "sw" / "preferences-00000.parquet").write_bytes(b"\0" * 1_700_000)  # 100 s
    (root / "synth" / "sw" / "notes.parquet").write_bytes(b"\0" * 10_000_000)  # not a preference shard
    base = _smoke(tmp_path)
    sharded = apply_overrides(base, {"corpus.stinystories_dir": "synth/st",
                                     "corpus.spokenswag_dir": str(root / "synth/sw")})
    c = base.corpus
    eval_s = (c.n_swag_heldout + c.n_heldout_stories) * pf.SPEECH_S_PER_STORY  # held-out pairs are still spoken
    assert pf.speech_hours(sharded) * 3600 == pytest.approx(300 + eval_s)
    assert pf.written_speech_hours(sharded) * 3600 == pytest.approx(eval_s)
    assert pf.estimate(sharded)["disk"]["synthetic speech (FLAC)"] == pytest.approx(eval_s * pf.FLAC_BYTES_PER_S)
    empty = apply_overrides(base, {"corpus.stinystories_dir": "synth/missing"})
    assert pf.speech_hours(empty) < pf.speech_hours(base)  # no shards yet: nothing counted for stories
