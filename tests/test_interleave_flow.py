"""The interleaved path end to end on a tiny smoke_interleaved under Prefect's test harness: espeak sTinyStories
shards -> units -> word alignments -> token docs -> pre-training on the mix -> cross-modal StoryCloze in the catalog
and the report; `reproduce` hands the preset to this flow, and a rerun reuses every stage."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from data_catalog import Catalog

TINY = {
    "corpus.n_train_stories": 24, "corpus.n_heldout_stories": 10, "corpus.n_swag_train": 4, "corpus.n_swag_heldout": 4,
    "units.n_units": 64, "units.kmeans_sample_frames": 4000, "units.kmeans_iters": 4, "train.max_steps": 6,
    "train.checkpoint_every_s": 600, "train.log_every_steps": 1, "model.tiny_hidden_size": 32, "model.tiny_layers": 1,
    "interleave.max_cross_modal_items": 6, "interleave.text_vocab_size": 400,
}


@pytest.mark.slow
def test_smoke_interleaved_end_to_end_then_cached(prefect_harness, tmp_path):
    from flows.reproduce import reproduce

    root = tmp_path / "data"
    out = reproduce(preset="smoke_interleaved", overrides=TINY, data_root=str(root))
    metrics = sorted(r["metric"] for r in out["results"])
    assert metrics == ["cm_tsc_s2s", "cm_tsc_s2t", "cm_tsc_t2s", "cm_tsc_t2t"]
    assert all(r["n"] == 6 and 0.0 <= r["accuracy"] <= 1.0 for r in out["results"])
    catalog = Catalog(root / "catalog.duckdb")
    rows = {r["metric"] for r in catalog.eval_results(run="smoke_interleaved")}
    assert set(metrics) <= rows and "tsc_like" not in rows
    docs = [a for a in catalog.artifacts(stage="tokens")]
    assert {a["dataset"] for a in docs} == {"text", "interleaved", "speech"}
    inter = next(a for a in docs if a["dataset"] == "interleaved")
    assert set(pq.read_table(inter["path"]).column("kind").to_pylist()) == {"interleaved"}
    assert list((root / "units" / "stinystories" / "train").glob("words-*.parquet"))
    # cm_generate: 5 spoken prompts -> text; no judge LM offline, so GenPPL is a skip that says why, auto-BLEU a value
    gen = {r["metric"]: r for r in out["generated"]}
    assert set(gen) == {"cm_generate_genppl", "cm_generate_auto_bleu"} and gen["cm_generate_genppl"]["value"] is None
    assert gen["cm_generate_auto_bleu"]["n"] == 5 and gen["cm_generate_auto_bleu"]["value"] is not None
    html = open(out["report"], encoding="utf-8").read()
    assert "Cross-modal StoryCloze" in html and "cm_tsc_t2s" in html and "Cross-modal generation" in html
    assert [s["stage"] for s in out["stages"]] == ["data", "pre-training", "evaluation"]

    again = reproduce(preset="smoke_interleaved", overrides=TINY, data_root=str(root))
    assert again["checkpoints"] == out["checkpoints"]
    assert {(r["metric"], r["accuracy"]) for r in again["results"]} == {(r["metric"], r["accuracy"]) for r in out["results"]}
    assert again["generated"] == out["generated"]  # seeded: the same continuations, so the same auto-BLEU


def test_interleaved_flow_stops_before_any_work_without_cm_generates_judge(prefect_harness, tmp_path, monkeypatch):
    """The flow itself (a deployment run, `python -m flows.interleaved`), not only the CLI, checks the evaluation
    inputs first: without eval.allow_skip a missing judge LM of cm_generate fails the run before any stage."""
    from flows.reproduce import reproduce

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: no Llama-3.2-1B
    root = tmp_path / "data"
    state = reproduce(preset="smoke_interleaved", overrides={**TINY, "eval.allow_skip": False}, data_root=str(root),
                      return_state=True)
    assert state.is_failed() and "GenPPL text LM of cm_generate — eval.ppl_lm" in state.message, state.message
    assert not (root / "tokens").exists() and not (root / "units").exists()
