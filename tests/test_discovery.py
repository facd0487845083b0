"""Checkpoint discovery and content-addressed checkpoint identity (copies share it, rewrites change it)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from slam_core import discovery
from slam_core.discovery import checkpoint_digest, find_checkpoints, identity_files


def save_tiny(out_dir: Path, seed: int = 0, max_shard_size: str | None = None) -> Path:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=502, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    Qwen2ForCausalLM(cfg).save_pretrained(out_dir, **kwargs)
    return out_dir


@pytest.fixture()
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every file actually hashed, with the in-process digest memory emptied."""
    calls: list[Path] = []
    real = discovery.file_sha256
    monkeypatch.setattr(discovery, "_FILE_DIGESTS", {})
    monkeypatch.setattr(discovery, "file_sha256", lambda p: calls.append(Path(p)) or real(p))
    return calls


def test_copy_has_the_same_digest_and_rewritten_weights_a_new_one(tmp_path: Path, hash_calls: list[Path]) -> None:
    ckpt = save_tiny(tmp_path / "root-a" / "checkpoints" / "step-1")
    digest = checkpoint_digest(ckpt)
    assert len(digest) == 16
    copy = tmp_path / "root-b" / "elsewhere"
    shutil.copytree(ckpt, copy)                      # new path, new mtimes, same bytes
    assert checkpoint_digest(copy) == digest
    os.utime(ckpt / "model.safetensors", ns=(1, 1))  # touched, same bytes: hashed again, same identity
    assert checkpoint_digest(ckpt) == digest
    save_tiny(ckpt, seed=1)                          # rewritten weights
    assert checkpoint_digest(ckpt) != digest
    assert checkpoint_digest(copy) == digest
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"rope_theta": 1.0}))
    assert checkpoint_digest(copy) != digest         # same weights, another model


def test_digest_is_not_rehashed_while_the_file_is_unchanged(tmp_path: Path, hash_calls: list[Path]) -> None:
    ckpt = save_tiny(tmp_path / "ckpt")
    cache = tmp_path / "cache" / "digests.json"
    digest = checkpoint_digest(ckpt, cache_path=cache)
    assert sorted(p.name for p in hash_calls) == ["config.json", "model.safetensors"]
    assert checkpoint_digest(ckpt, cache_path=cache) == digest and len(hash_calls) == 2   # in-process memory
    discovery._FILE_DIGESTS.clear()                                                       # a later process
    assert checkpoint_digest(ckpt, cache_path=cache) == digest and len(hash_calls) == 2   # read from the cache
    save_tiny(ckpt, seed=1)
    new = checkpoint_digest(ckpt, cache_path=cache)
    assert new != digest and len(hash_calls) == 4
    entries = json.loads(cache.read_text())
    assert len(entries) == 2 and set(entries.values()) <= {*discovery._FILE_DIGESTS.values()}  # stale ones pruned
    cache.write_text("not json")                                                          # a broken cache
    discovery._FILE_DIGESTS.clear()
    assert checkpoint_digest(ckpt, cache_path=cache) == new and len(hash_calls) == 6


def test_sharded_checkpoint_covers_every_shard(tmp_path: Path, hash_calls: list[Path]) -> None:
    ckpt = save_tiny(tmp_path / "ckpt", max_shard_size="50KB")
    files = identity_files(ckpt)
    shards = [f.name for f in files if f.name.startswith("model-")]
    assert files[1].name == "model.safetensors.index.json" and len(shards) >= 2
    digest = checkpoint_digest(ckpt)
    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)
    assert checkpoint_digest(copy) == digest
    last = copy / shards[-1]
    last.write_bytes(last.read_bytes()[:-1] + b"\0")   # one byte of one shard
    assert checkpoint_digest(copy) != digest
    last.unlink()
    with pytest.raises(FileNotFoundError, match=shards[-1]):
        checkpoint_digest(copy)


def test_find_checkpoints_skips_hidden_and_incomplete_dirs(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    old = save_tiny(root / "step-1")
    os.utime(old / "model.safetensors", (1_000, 1_000))
    new = save_tiny(root / "step-2")
    save_tiny(root / ".step-3.tmp")
    (root / "step-4").mkdir()
    (root / "step-4" / "config.json").write_text("{}")
    assert find_checkpoints(root) == [old, new]
    assert find_checkpoints(tmp_path / "nowhere") == []


@pytest.mark.slow
def test_find_checkpoints_keeps_only_the_step_a_training_run_points_at(tmp_path: Path) -> None:
    # a reproduction evaluates each training run's final checkpoint (the one `latest` names); the older step
    # kept for resuming must not look new to the scheduled evaluation
    root = tmp_path / "checkpoints"
    steps = root / "pretrain-abc" / "checkpoints"
    old_step, final_step = save_tiny(steps / "step-000400"), save_tiny(steps / "step-000460")
    (steps / "latest").write_text("step-000460\n")
    dpo = save_tiny(root / "dpo-def" / "checkpoints" / "step-000010")
    (dpo.parent / "latest").write_text("step-000010\n")
    plain = save_tiny(root / "exported")  # a checkpoint outside any training run is always found
    assert set(find_checkpoints(root)) == {final_step, dpo, plain} and old_step.is_dir()


def test_evaluate_flow_shares_samples_of_copies_and_redoes_rewritten_weights(prefect_harness, tmp_path: Path,
                                                                             one_torch_thread: None) -> None:
    from data_catalog import Catalog
    from flows.evaluate import evaluate
    from test_generate import write_pairs

    data = tmp_path / "data"
    pairs = write_pairs(tmp_path / "pairs.parquet", 4)
    prepared = {"pairs": {"tsc_like": str(pairs)}, "pair_fingerprints": {"tsc_like": "pairs-v1"}}
    overrides = {"eval.metrics": ["tsc_like", "generate"], "eval.n_generate": 2, "eval.max_new_tokens": 6,
                 "eval.prompt_s": 0.5}
    first = str(save_tiny(tmp_path / "run" / "step-1"))

    def run(ckpts: list[str]) -> dict:
        return evaluate(preset="smoke", overrides=overrides, data_root=str(data), checkpoints=ckpts,
                        prepared=prepared)

    def rows() -> dict:
        return {(r["checkpoint"], r["metric"]): r for r in Catalog(data / "catalog.duckdb").eval_results(run="smoke")}

    out = run([first])
    assert out["computed"] == 1 and json.loads(rows()[(first, "tsc_like")]["details"])["weights"] == \
        checkpoint_digest(first)
    # a copy is a new checkpoint path: scored and recorded for that path, but its samples are the first one's
    copy = str(tmp_path / "elsewhere" / "step-1")
    shutil.copytree(first, copy)
    both = run([first, copy])
    assert both["computed"] == 1 and (copy, "tsc_like") in rows()
    assert rows()[(copy, "tsc_like")]["value"] == rows()[(first, "tsc_like")]["value"]
    assert both["generations"] == out["generations"]
    assert run([first, copy])["computed"] == 0                        # nothing new: nothing done
    # a later copy too (the first copy's task result is in Prefect's cache by now: it must not answer for this one)
    copy2 = str(tmp_path / "third" / "step-1")
    shutil.copytree(first, copy2)
    assert run([first, copy, copy2])["computed"] == 1 and (copy2, "tsc_like") in rows()
    assert (data / "eval" / "checkpoint-digests.json").is_file()
    # rewritten weights at the same path: evaluated again, new samples
    save_tiny(Path(first), seed=1)
    again = run([first])
    assert again["computed"] == 1 and again["generations"] != out["generations"]
    assert json.loads(rows()[(first, "tsc_like")]["details"])["weights"] == checkpoint_digest(first)
    assert json.loads(rows()[(copy, "tsc_like")]["details"])["weights"] != checkpoint_digest(first)
