"""The paper preset's speech inputs: sharded sTinyStories and SpokenSwag (made by `slam synth`, espeak) feed the
prepare-data flow; every shard becomes its own cached, recorded unit shard; bad rows are quarantined; the DPO
loader reads the per-shard pair units; a lost shard is redone alone with the same bytes."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_catalog import Catalog
from slam_core.config import CorpusConfig, DpoConfig, SynthConfig, apply_overrides
from slam_core.corpora.builtin import prepare_builtin_corpus
from slam_core.presets import get_preset
from slam_core.schemas import PREFERENCE_AUDIO
from slam_core.synth.jobs import default_out_dir
from test_flow_e2e import TINY

SHARDS = {"corpus.stinystories_dir": "synth/stinystories/train", "corpus.spokenswag_dir": "synth/spokenswag/train"}


def test_slam_preset_reads_where_slam_synth_writes_and_missing_shards_fail_first(tmp_path):
    from flows.prepare_data import configured_dir, spokenswag_shards, stinystories_shards

    cfg = apply_overrides(get_preset("slam"), {"run.data_root": str(tmp_path)})
    for kind in ("stinystories", "spokenswag"):
        assert configured_dir(cfg, getattr(cfg.corpus, f"{kind}_dir")) == default_out_dir(tmp_path, kind) / "train"
    with pytest.raises(FileNotFoundError, match="slam synth stinystories"):
        stinystories_shards(cfg)
    with pytest.raises(FileNotFoundError, match="slam synth spokenswag"):
        spokenswag_shards(cfg)
    absolute = apply_overrides(cfg, {"corpus.spokenswag_dir": str(tmp_path / "elsewhere")})
    assert configured_dir(absolute, absolute.corpus.spokenswag_dir) == tmp_path / "elsewhere"


def test_run_synthesis_quarantines_planning_skips_and_summarises(tmp_path):
    from slam_core.corpora.builtin import write_parquet_atomic
    from slam_core.schemas import STORIES
    from slam_core.synth.jobs import SHARD_FUNCTIONS, run_synthesis
    from slam_core.synth.shards import run_recorded_shards

    stories = write_parquet_atomic(
        [{"story_id": "ok", "topic": "t", "sentences": ["Tom had a red ball.", "He threw it."], "split": "train"},
         {"story_id": "mute", "topic": "t", "sentences": ["\U0001F600", "!!"], "split": "train"}],
        STORIES, tmp_path / "stories.parquet")
    catalog = tmp_path / "root" / "catalog.duckdb"
    out = run_synthesis("stinystories", stories, SynthConfig(voices=["en-us"]), 3, tmp_path / "root",
                        lambda jobs: run_recorded_shards(jobs, 1, catalog, shard_functions=SHARD_FUNCTIONS))
    assert out["out"] == str(default_out_dir(tmp_path / "root", "stinystories"))
    assert out["rows"] == 1 and out["quarantined"] == {"empty_text": 1} and out["reused_shards"] == 0
    assert [(q["path"], q["reason"], q["fingerprint"]) for q in Catalog(catalog).quarantined("synth")] == [
        ("mute", "empty_text", "plan")]
    assert Path(out["shards"][0]).parent == default_out_dir(tmp_path / "root", "stinystories") / "train"


def _bad_shard(good_shard: Path, out: Path) -> Path:
    """A shard with one good pair and one whose chosen audio cannot be decoded."""
    good = pq.read_table(good_shard).to_pylist()[0]
    bad = {**good, "pair_id": "broken-pair", "chosen_audio": b"not audio at all"}
    pq.write_table(pa.Table.from_pylist([good | {"pair_id": "good-copy"}, bad], schema=PREFERENCE_AUDIO), out)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory, prefect_harness):
    """<root>/synth/{stinystories,spokenswag}/train shards made by `slam synth` with no --out (sTinyStories through
    the Prefect synthesize flow), plus one SpokenSwag shard with an undecodable row."""
    from flows.cli import main

    tmp = tmp_path_factory.mktemp("shards")
    root = tmp / "root"
    text = prepare_builtin_corpus(CorpusConfig(n_train_stories=8, n_heldout_stories=2, n_swag_train=5,
                                               n_swag_heldout=2), 5, tmp / "text")
    common = ["--backend", "espeak", "--voices", "en-us", "en-gb", "--workers", "1", "--shard-rows", "3",
              "--data-root", str(root)]
    assert main(["synth", "stinystories", "--input", text["stories"], "--prefect", *common]) == 0
    assert main(["synth", "spokenswag", "--input", text["triples"], *common]) == 0
    swag_dir = root / "synth" / "spokenswag" / "train"
    _bad_shard(swag_dir / "preferences-00000.parquet", swag_dir / "preferences-00002.parquet")
    return root


@pytest.mark.slow
def test_prepare_data_turns_shards_into_units_and_dpo_pairs_then_reuses_and_redoes_one(shards, capsys):
    from flows.prepare_data import prepare_data
    from slam_core.lm.dpo import load_preference_pairs

    root = shards
    story_files = sorted((root / "synth" / "stinystories" / "train").glob("data-*.parquet"))
    swag_files = sorted((root / "synth" / "spokenswag" / "train").glob("preferences-*.parquet"))
    assert len(story_files) >= 2 and len(swag_files) == 3
    out = prepare_data(preset="smoke", overrides=TINY | SHARDS, data_root=str(root))
    cat = Catalog(root / "catalog.duckdb")

    # sTinyStories: one segment shard and one unit shard per audio shard, one segment per utterance, no VAD
    assert len(out["unit_shards"]) == len(story_files)
    utterances = sum(pq.read_metadata(f).num_rows for f in story_files)
    units = [r for p in out["unit_shards"] for r in pq.read_table(p).to_pylist()]
    assert len(units) == utterances and {r["dataset"] for r in units} == {"stinystories"}
    assert not [a for a in cat.artifacts("synth") if a["dataset"] in ("stories", "preferences")]

    # SpokenSwag: one pair-unit shard per input shard, in the shards' order; the broken row quarantined
    pair_dir = Path(out["pairs"]["preferences"])
    assert sorted(p.name for p in pair_dir.glob("*.parquet")) == [f.name for f in swag_files]
    recorded = [a for a in cat.artifacts("pairs") if a["dataset"] == "spokenswag"]
    assert sorted(Path(a["path"]).name for a in recorded) == [f.name for f in swag_files]
    quarantined = [q for q in cat.quarantined("pairs") if q["dataset"] == "spokenswag"]
    assert [(q["path"], q["reason"]) for q in quarantined] == [("broken-pair/chosen", "unreadable")]
    expected_ids = [i for f in swag_files for i in pq.read_table(f).column("pair_id").to_pylist() if i != "broken-pair"]
    assert pq.read_table(pair_dir).column("pair_id").to_pylist() == expected_ids

    # the DPO loader reads the directory: every good pair, SlamKit token layout (BOS prompt, EOS completions)
    pairs, skipped = load_preference_pairs(pair_dir, DpoConfig(), vocab_size=TINY["units.n_units"] + 2)
    assert len(pairs) == len(expected_ids) and skipped == []
    assert all(p[0] == 1 and len(p) > 1 and c[-1] == 1 and r[-1] == 1 for p, c, r in pairs)

    # rerun: every shard reused, nothing new recorded, same result
    n_rows = len(cat.artifacts())
    rerun = prepare_data(preset="smoke", overrides=TINY | SHARDS, data_root=str(root))
    assert {k: v for k, v in rerun.items() if k != "shards"} == {k: v for k, v in out.items() if k != "shards"}
    assert all(c["redone"] == 0 and c["reused"] > 0 for c in rerun["shards"].values())
    assert len(cat.artifacts()) == n_rows

    # a shard lost (as if the run died before it was done) is redone alone, with the same bytes
    lost = pair_dir / swag_files[1].name
    before = lost.read_bytes()
    lost.unlink()
    again = prepare_data(preset="smoke", overrides=TINY | SHARDS, data_root=str(root))
    assert again["pairs"] == out["pairs"] and lost.read_bytes() == before
    assert again["shards"]["SpokenSwag pair-unit shards"] == {"reused": len(swag_files) - 1, "redone": 1}
    assert len(cat.artifacts()) == n_rows
    capsys.readouterr()

