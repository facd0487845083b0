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
    state = reproduce(preset="smoke", overrides=TINY, data_root=str(root), return_state=True)
    out = state.result()
    cold_s = time.monotonic() - t0
    _check_the_run_tells_its_story(state.state_details.flow_run_id, out)

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
    data_row = next(s for s in again["stages"] if s["stage"] == "data")
    assert "unit shards" in data_row["shards"] and " 0 redone" in data_row["shards"]
    assert all(f"{n} redone" not in data_row["shards"] for n in range(1, 10))
    assert len(cat.artifacts()) == n_rows
    assert warm_s < cold_s / 2, (warm_s, cold_s)


def _check_the_run_tells_its_story(flow_run_id, out) -> None:
    """The reproduction's own flow run carries the metrics (checkpoint named), the stage summary and an http
    link to the report; every progress artifact of the run reached 100 %."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        own = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))}
        progress = [a for a in client.read_artifacts() if a.type == "progress"]
    assert {"smoke-metrics", "smoke-stages", "smoke-report", "smoke-summary"} <= set(own)
    table = own["smoke-metrics"].data
    table = json.loads(table) if isinstance(table, str) else table
    labels = {r["checkpoint"] for r in table}
    assert any(lbl.startswith("pretrain step ") for lbl in labels) and any(lbl.startswith("dpo step ") for lbl in labels)
    assert len(table) == len({(r["checkpoint"], r["metric"]) for r in table}) >= 4
    assert all("proxy" in r["note"] for r in table if r["metric"] in ("tsc_like", "ssc_like"))
    stages = own["smoke-stages"].data
    stages = json.loads(stages) if isinstance(stages, str) else stages
    by_stage = {r["stage"]: r for r in stages}
    assert {"data", "pre-training", "DPO", "evaluation"} <= set(by_stage)
    assert by_stage["data"]["tokens"] > 0 and by_stage["data"]["segments"] > 0 and by_stage["data"]["hours"] > 0
    assert by_stage["pre-training"]["steps"] > 0 and by_stage["pre-training"]["val_loss"] is not None
    assert by_stage["pre-training"]["tokens_per_s"] > 0
    assert "unit shards" in by_stage["data"]["shards"]
    assert f"({out['report_url']})" in own["smoke-report"].data and out["report_url"].startswith("http://127.0.0.1:")
    assert progress and all(float(a.data) == 100.0 for a in progress), [(a.description, a.data) for a in progress]
