"""Outputs of different configs never overwrite each other unnoticed, and lost state is rebuilt from the right
source: a catalog row is served only for the bytes it recorded (size, and sha256 when the file was replaced);
a row displaced by another config's write of the same path is dropped; the DPO reference of a resumed run whose
stored log-probs are gone comes from the initial model, never from the trained policy."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from data_catalog import Catalog, produce_or_reuse


def _producer(path, text, calls):
    def produce():
        calls.append(text)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return {"rows": 1}
    return produce


def test_two_configs_sharing_a_path_never_serve_each_others_bytes(tmp_path):
    catalog = Catalog(tmp_path / "catalog.duckdb")
    out, calls = tmp_path / "units-00000.parquet", []
    common = dict(stage="units", dataset="d", split="train", out_path=out)
    produce_or_reuse(catalog, fingerprint="fp-a", produce=_producer(out, "config A", calls), **common)
    produce_or_reuse(catalog, fingerprint="fp-b", produce=_producer(out, "config B bytes", calls), **common)
    assert [r["fingerprint"] for r in catalog.artifacts()] == ["fp-b"]  # A's row pointed at B's bytes: dropped
    again = produce_or_reuse(catalog, fingerprint="fp-a", produce=_producer(out, "config A", calls), **common)
    assert not again["reused"] and out.read_text() == "config A" and calls == ["config A", "config B bytes", "config A"]


def test_same_size_rewrite_is_caught_by_the_content_hash(tmp_path):
    catalog = Catalog(tmp_path / "catalog.duckdb")
    out, calls = tmp_path / "shard.parquet", []
    common = dict(stage="units", dataset="d", split="train", out_path=out, fingerprint="fp")
    produce_or_reuse(catalog, produce=_producer(out, "AAAA", calls), **common)
    assert produce_or_reuse(catalog, produce=_producer(out, "AAAA", calls), **common)["reused"]
    out.write_text("BBBB")  # same size, other bytes, written behind the catalog's back
    assert catalog.find_artifact(out, "fp") is None  # reported and dropped, never served
    redo = produce_or_reuse(catalog, produce=_producer(out, "AAAA", calls), **common)
    assert not redo["reused"] and out.read_text() == "AAAA"
    shutil.copy(out, tmp_path / "copy")  # a copy back (new inode and mtime, same bytes) is still good
    os.replace(tmp_path / "copy", out)
    assert catalog.find_artifact(out, "fp") is not None and catalog.has_fingerprint("fp")


def test_a_changed_directory_artifact_is_not_served(tmp_path):
    catalog = Catalog(tmp_path / "catalog.duckdb")
    run_dir = tmp_path / "run"

    def produce():
        run_dir.mkdir(exist_ok=True)
        (run_dir / "weights.bin").write_bytes(b"1234")
        return {"rows": 1}

    produce_or_reuse(catalog, stage="checkpoints", dataset="d", split="train", out_path=run_dir, fingerprint="fp",
                     produce=produce)
    assert catalog.has_fingerprint("fp")
    (run_dir / "extra.bin").write_bytes(b"x")
    assert not catalog.has_fingerprint("fp")


def test_rows_recorded_before_hashes_are_checked_by_size(tmp_path):
    import duckdb

    catalog = Catalog(tmp_path / "catalog.duckdb")
    out = tmp_path / "old.parquet"
    out.write_text("old bytes")
    with catalog.connect() as con:  # a row as an older slam wrote it: no sha256, no stat signature
        con.execute("INSERT INTO artifacts (stage, dataset, split, path, fingerprint, rows, tokens, audio_seconds, "
                    "bytes, upstream, created_at) VALUES ('units','d','train',?, 'fp', 1, 0, 0, 9, '[]', now())",
                    [str(out)])
    assert catalog.find_artifact(out, "fp") is not None
    out.write_text("different length")
    assert catalog.find_artifact(out, "fp") is None
    assert isinstance(duckdb.__version__, str)


def test_dpo_reference_of_a_resumed_run_comes_from_the_initial_model(tmp_path):
    from slam_core.config import DpoConfig, ModelConfig
    from slam_core.errors import InputError
    from slam_core.lm import dpo
    from slam_core.lm.model import init_speech_lm, load_speech_lm, resolve_base

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from slam_core.schemas import PREFERENCE_UNITS

    torch.set_num_threads(1)
    model_cfg = ModelConfig(base="tiny-qwen2", context_len=64, dtype="float32", tiny_hidden_size=32, tiny_layers=1)
    init = init_speech_lm(model_cfg, resolve_base(model_cfg, tmp_path), tmp_path / "init", seed=0)["path"]
    rng = np.random.default_rng(0)
    rows = [{"pair_id": f"p{i}", "prompt_units": rng.integers(0, 50, 6).tolist(),
             "chosen_units": rng.integers(0, 50, 5).tolist(), "rejected_units": rng.integers(0, 500, 5).tolist()}
            for i in range(8)]
    prefs = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=PREFERENCE_UNITS), prefs)
    cfg = DpoConfig(max_steps=2, budget_s=600, lr=5e-3, warmup_steps=0, micro_batch_size=4, grad_accum=1)
    run = tmp_path / "dpo"
    dpo.train_dpo(init, prefs, model_cfg, cfg, run, seed=0, device="cpu")
    stored = torch.load(run / dpo.REFERENCE_FILE, weights_only=True)
    (run / dpo.REFERENCE_FILE).unlink()
    dpo.train_dpo(init, prefs, model_cfg, cfg.model_copy(update={"max_steps": 3}), run, seed=0, device="cpu")
    assert torch.allclose(torch.load(run / dpo.REFERENCE_FILE, weights_only=True), stored)
    trained = load_speech_lm(dpo.latest_checkpoint(run))
    pairs, _ = dpo.load_preference_pairs(prefs, cfg, trained.config.vocab_size)
    from_policy = dpo.compute_reference_logps(trained, pairs, 4, torch.device("cpu"), torch.float32)
    assert not torch.allclose(from_policy, stored)  # the trained policy would have given other numbers
    (run / dpo.REFERENCE_FILE).unlink()
    shutil.rmtree(init)
    with pytest.raises(InputError, match="initial model they come from is gone"):
        dpo.train_dpo(init, prefs, model_cfg, cfg.model_copy(update={"max_steps": 4}), run, seed=0, device="cpu")
