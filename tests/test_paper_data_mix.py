"""The paper preset's data path (Table 4) on tiny local corpora: LibriSpeech (train-clean-100/360, train-other-500;
dev-clean and dev-other held out), Libri-Light (1 % of files held out, seeded) and a published-layout sTinyStories
set read in place become catalogued unit shards; pre-training mixes the three training sets with the configured
weights and reports one validation loss per held-out set. Tiny models are swapped in with overrides."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus_fixtures import flac_bytes, librilight_members, librispeech_members, tone, write_tree

from data_catalog import Catalog
from slam_core.data_mix import librilight_validation_files
from slam_core.lm.data import PackedLoader, sources_from_paths
from slam_core.schemas import STINYSTORIES_AUDIO
from test_flow_e2e import TINY

LIBRISPEECH_PARTS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other")
WEIGHTS = {"librilight": 2.0, "librispeech": 1.0, "stinystories": 1.0}


def _stinystories(out_dir: Path, n_rows: int = 12) -> Path:
    """A published-layout sTinyStories shard (HF Audio cells of 16 kHz FLAC, text, alignment)."""
    rows = [{"audio": {"bytes": flac_bytes(tone(1.0 + 0.1 * i, 250 + 20 * i, seed=i)), "path": f"{i}_LJ.flac"},
             "text": f"story {i}", "aligned_text": [{"word": "story", "start_time": 0.0, "end_time": 0.5}],
             "split_sentence": False} for i in range(n_rows)]
    out_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=STINYSTORIES_AUDIO), out_dir / "data-00000-of-00001.parquet",
                   row_group_size=5)
    return out_dir


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpora")
    for part in LIBRISPEECH_PARTS:
        write_tree(tmp / "LibriSpeech-copy", librispeech_members(part)[0])
    write_tree(tmp / "librilight-copy", librilight_members("small")[0])
    return {"librispeech": tmp / "LibriSpeech-copy", "librilight": tmp / "librilight-copy",
            "stinystories": _stinystories(tmp / "sTinyStories" / "data")}


def _overrides(corpora) -> dict:
    return TINY | {
        "run.device": "cpu", "units.encoder": "tiny", "units.layer": 2, "units.kmeans_path": None, "units.fit_kmeans": True,
        "units.shard_segments": 64, "model.base": "tiny-qwen2", "model.context_len": 128, "model.dtype": "float32",
        "model.tiny_hidden_size": 32, "model.tiny_layers": 1, "train.micro_batch_size": 2, "train.grad_accum": 1,
        "train.max_steps": 3, "train.dataset_weights": WEIGHTS, "eval.max_new_tokens": 20,
        "eval.metrics": ["tsc_like", "ssc_like"], "dpo.enabled": False, "parallel.n_gpus": 1,
        "corpus.source": "builtin", "synth.backend": "espeak", "synth.voices": ["en-us"],
        "corpus.spokenswag_dir": None, "corpus.librispeech_dir": str(corpora["librispeech"]),
        "corpus.librilight_dir": str(corpora["librilight"]), "corpus.librilight_subsets": ["small"],
        "corpus.stinystories_dir": str(corpora["stinystories"]),
    }


def test_librilight_holdout_is_seeded_layout_free_and_at_least_one_file(tmp_path):
    files = [tmp_path / "small" / f"spk{i}" / "book" / f"f{i}.flac" for i in range(300)]
    moved = [Path("/elsewhere/large") / f.relative_to(tmp_path / "small") for f in files]
    held = librilight_validation_files(files, 0.01, seed=42)
    assert len(held) == 3 and held == librilight_validation_files(list(reversed(files)), 0.01, seed=42)
    assert {f.name for f in held} == {f.name for f in librilight_validation_files(moved, 0.01, seed=42)}
    assert held != librilight_validation_files(files, 0.01, seed=43)
    assert len(librilight_validation_files(files[:3], 0.01, seed=42)) == 1
    assert librilight_validation_files(files[:1], 0.01, seed=42) == set()


@pytest.mark.slow
def test_paper_preset_prepares_and_mixes_librilight_librispeech_and_stinystories(corpora, tmp_path, prefect_harness,
                                                                               one_torch_thread):
    from flows.prepare_data import prepare_data
    from flows.train_lm import train_lm

    root = tmp_path / "root"
    overrides = _overrides(corpora)
    out = prepare_data(preset="slam", overrides=overrides, data_root=str(root))

    # every set became catalogued unit shards under units/<set>/<split>/
    sets = out["sets"]
    assert set(sets) == {"librilight/train", "librilight/validation", "librispeech/train-clean-100",
                         "librispeech/train-clean-360", "librispeech/train-other-500", "librispeech/dev-clean",
                         "librispeech/dev-other", "stinystories/train"}
    assert all(s["tokens"] > 0 and s["shards"] >= 1 for s in sets.values())
    assert {k for k, s in sets.items() if s["role"] == "validation"} == {
        "librilight/validation", "librispeech/dev-clean", "librispeech/dev-other"}
    assert set(out["val_unit_shards"]) == {"librilight/validation", "librispeech/dev-clean", "librispeech/dev-other"}
    recorded = {(a["dataset"], a["split"]) for a in Catalog(root / "catalog.duckdb").artifacts("units")}
    assert {("librispeech", "dev-other"), ("librilight", "validation"), ("stinystories", "train")} <= recorded
    training = {Path(p).parent.parent.name for p in out["unit_shards"]}
    assert training == {"librilight", "librispeech", "stinystories"}
    assert not any("dev-" in p or "/validation/" in p for p in out["unit_shards"])  # held-out sets stay out

    # Libri-Light: one of its 3 files held out (seeded), cut by the shipped voice activity
    val_rows = pq.read_table(out["val_unit_shards"]["librilight/validation"]).to_pylist()
    assert len({r["segment_id"].rsplit("-", 1)[0] for r in val_rows}) == 1
    # sTinyStories: read in place, one segment per utterance, nothing re-encoded under the data root
    stories = pq.read_table([p for p in out["unit_shards"] if "/stinystories/" in p]).to_pylist()
    assert len(stories) == 12 and not list(root.rglob("*.flac"))
    segs = pq.read_table(root / "segments" / "stinystories" / "train").to_pylist()
    assert segs[7]["source_path"].endswith("data-00000-of-00001.parquet#audio:7")

    # the training mix: the three sets with the configured weights, each drawn in proportion
    sources = sources_from_paths([Path(p) for p in out["unit_shards"]], WEIGHTS)
    assert [(s.name, s.weight) for s in sources] == [("librilight", 2.0), ("librispeech", 1.0),
                                                    ("stinystories", 1.0)]
    loader = PackedLoader(sources, 128, 1, seed=0)
    drawn: Counter[str] = Counter()
    for reader in loader._readers:  # count the examples each set hands out
        reader.next = lambda epochs, r=reader, take=reader.next: drawn.update([r.examples.name]) or take(epochs)
    for _ in range(800):
        loader._next_example()
    assert drawn["librilight"] / 800 == pytest.approx(0.5, abs=0.06)
    assert drawn["librispeech"] / 800 == pytest.approx(0.25, abs=0.06)
    assert drawn["stinystories"] / 800 == pytest.approx(0.25, abs=0.06)

    # pre-training through the flow: the mix recorded, one validation loss per held-out set in metrics.csv
    result = train_lm(preset="slam", overrides=overrides, data_root=str(root), prepared=out)
    summary = result["pretrain"]["summary"]
    assert summary["mix"] == {"librilight": 0.5, "librispeech": 0.25, "stinystories": 0.25}
    assert set(summary["val_losses"]) == {"librilight/validation", "librispeech/dev-clean", "librispeech/dev-other"}
    assert all(np.isfinite(v) for v in summary["val_losses"].values())
    rows = list(csv.DictReader((Path(result["pretrain"]["run_dir"]) / "metrics.csv").open()))
    final = rows[-1]
    for name in ("librilight/validation", "librispeech/dev-clean", "librispeech/dev-other"):
        assert float(final[f"val_loss/{name}"]) == pytest.approx(summary["val_losses"][name], abs=1e-5)
    resolved = json.loads((root / "runs" / "slam" / "prepare-data.config.json").read_text())
    assert resolved["train"]["dataset_weights"] == WEIGHTS

    # a rerun is served from the catalog: nothing redone
    n_rows = len(Catalog(root / "catalog.duckdb").artifacts())
    again = prepare_data(preset="slam", overrides=overrides, data_root=str(root))
    assert {k: v for k, v in again.items() if k != "shards"} == {k: v for k, v in out.items() if k != "shards"}
    assert again["shards"] and all(c["redone"] == 0 for c in again["shards"].values())
    assert len(Catalog(root / "catalog.duckdb").artifacts()) == n_rows
