"""The whole recipe on a tiny preset under Prefect's test harness: every stage runs, then a rerun is cached."""

from __future__ import annotations

import json
import time

import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM

from data_catalog import Catalog

TINY = {
    "corpus.n_train_stories": 36, "corpus.n_heldout_stories": 12, "corpus.n_swag_train": 8,
    "corpus.n_swag_heldout": 8, "units.n_units": 64, "units.kmeans_sample_frames": 4000, "units.kmeans_iters": 4,
    "train.budget_s": 8, "train.calibration_steps": 2, "train.checkpoint_every_s": 4, "dpo.budget_s": 3,
    "eval.n_generate": 2, "eval.max_new_tokens": 20, "train.log_every_steps": 1,
}


@pytest.mark.slow
def test_reproduce_tiny_end_to_end_then_cached(prefect_harness, tmp_path):
    from flows.reproduce import reproduce

    root = tmp_path / "data"
    t0 = time.monotonic()
    out = reproduce(preset="smoke", overrides=TINY, data_root=str(root))
    cold_s = time.monotonic() - t0

    cat = Catalog(root / "catalog.duckdb")
    stages = {r["stage"] for r in cat.artifacts()}
    assert {"raw", "synth", "segments", "units", "pairs", "models", "checkpoints"} <= stages
    # unit shards hold the contract columns and the 64-unit vocabulary
    shard = next(r["path"] for r in cat.artifacts("units") if "units-" in r["path"])
    table = pq.read_table(shard)
    assert {"segment_id", "dataset", "split", "units", "durations"} <= set(table.column_names)
    assert str(table.schema.field("units").type) == "list<element: uint16>"
    assert max(max(u) for u in table.column("units").to_pylist()) < 64
    # checkpoints load with plain transformers, no slam import needed
    for ckpt in out["checkpoints"]:
        model = AutoModelForCausalLM.from_pretrained(ckpt)
        assert model.config.vocab_size == 66
    metrics = {(r["checkpoint"], r["metric"]) for r in cat.eval_results(run="smoke")}
    assert {(c, m) for c in out["checkpoints"] for m in ("tsc_like", "ssc_like")} <= metrics
    html = (root / "reports" / "smoke" / "index.html").read_text()
    assert "tsc_like" in html and "<img" in html

    # second run: everything served from cache, nothing re-trained, same results
    n_rows = len(cat.artifacts())
    t0 = time.monotonic()
    again = reproduce(preset="smoke", overrides=TINY, data_root=str(root))
    warm_s = time.monotonic() - t0
    assert json.dumps(again["results"], sort_keys=True) == json.dumps(out["results"], sort_keys=True)
    assert len(cat.artifacts()) == n_rows
    assert warm_s < cold_s / 2, (warm_s, cold_s)
