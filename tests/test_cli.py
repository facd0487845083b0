"""The `slam` command line on tiny inputs (no Prefect server needed for these subcommands)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from shared_data import REAL_SPEECH



@pytest.mark.skipif(not REAL_SPEECH.is_dir(), reason="shared/data/real-speech not present")
def test_units_extract_fits_centroids_then_writes_units(tmp_path, capsys):
    audio = tmp_path / "audio" / "spk1"
    audio.mkdir(parents=True)
    for f in REAL_SPEECH.glob("*.flac"):
        shutil.copy(f, audio / f.name)
    out = tmp_path / "units"
    rc = main(["units", "extract", "--audio", str(tmp_path / "audio"), "--out", str(out), "--preset", "smoke",
               "--data-root", str(tmp_path / "root"), "--set", "units.n_units=16", "--set", "units.kmeans_iters=3"])
    assert rc == 0 and (out / "centroids.npy").is_file()
    table = pq.read_table(next(out.glob("units-*.parquet")))
    rows = {r["segment_id"]: r for r in table.to_pylist()}
    assert set(rows) == {"spk1/audio1.flac", "spk1/audio2.flac"}
    assert sum(rows["spk1/audio1.flac"]["durations"]) == 352  # ⌊225,360 / 640⌋ frames, real 25 Hz strides
    assert max(max(r["units"]) for r in rows.values()) < 16


def test_bad_override_is_one_clear_error(tmp_path, capsys):
    rc = main(["model", "init", "--base", "tiny-qwen2", "--out", str(tmp_path / "m"), "--set", "train.lr=-1"])
    assert rc == 2 and "train.lr" in capsys.readouterr().err


def test_model_init_prints_parameter_count(tmp_path, capsys):
    rc = main(["model", "init", "--base", "tiny-qwen2", "--out", str(tmp_path / "m"), "--preset", "smoke",
               "--data-root", str(tmp_path / "root")])
    assert rc == 0 and "parameters" in capsys.readouterr().out
    assert (tmp_path / "m" / "config.json").is_file()


def test_catalog_summary_without_catalog_says_what_to_run(tmp_path, capsys):
    assert main(["catalog", "summary", "--data-root", str(tmp_path)]) == 1
    assert "slam run reproduce" in capsys.readouterr().err
