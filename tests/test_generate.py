"""Prompt cutting, EOS handling and seeded sampling of continuations on a tiny local Qwen2 checkpoint."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from slam_core.eval.generate import (  # noqa: E402
    generate_continuations, generated_units, prompt_units, write_generations,
)
from slam_core.schemas import EVAL_PAIRS_UNITS  # noqa: E402


def tiny_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=502, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    Qwen2ForCausalLM(cfg).save_pretrained(out_dir)
    return out_dir


def eos_after_unit0_checkpoint(out_dir: Path) -> Path:
    """Qwen2 whose next token depends only on the current one: after BOS -> unit 0, after unit 0 -> EOS (p≈1)."""
    hidden = 64
    cfg = Qwen2Config(vocab_size=502, hidden_size=hidden, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for token in range(hidden):
            model.model.embed_tokens.weight[token, token] = 1.0
        model.lm_head.weight[2, 1] = 40.0 / math.sqrt(hidden)   # BOS -> id 2 (unit 0)
        model.lm_head.weight[1, 2] = 40.0 / math.sqrt(hidden)   # id 2 -> EOS
    model.save_pretrained(out_dir)
    return out_dir


def write_pairs(path: Path, n: int) -> Path:
    pos = [[(7 * i + k) % 500 for k in range(40)] for i in range(n)]
    rows = {"pair_id": [f"s{i}" for i in range(n)], "set": ["tsc_like"] * n,
            "positive_units": pos, "positive_durations": [[3] * 40] * n,
            "negative_units": [[1, 2, 3]] * n, "negative_durations": [[1, 1, 1]] * n}
    pq.write_table(pa.Table.from_pydict(rows, schema=EVAL_PAIRS_UNITS), path)
    return path


def test_prompt_units_cut_by_cumulative_duration() -> None:
    units, durations = [10, 11, 12, 13], [25, 25, 30, 5]   # starts at 0, 1.0, 2.0, 3.2 s
    assert prompt_units(units, durations, prompt_s=3.0) == [10, 11, 12]   # unit 12 straddles 3 s: kept
    assert prompt_units(units, durations, prompt_s=2.0) == [10, 11]       # unit 12 starts exactly at the cut
    assert prompt_units(units, durations, prompt_s=0.01) == [10]          # never empty
    assert prompt_units(units, durations, prompt_s=10.0) == units
    with pytest.raises(ValueError, match="4 units but 3 durations"):
        prompt_units(units, durations[:3], prompt_s=3.0)


def test_generated_units_stop_at_first_eos_and_drop_pad() -> None:
    assert generated_units([12, 2, 0, 1, 40, 1]) == [10, 0]
    assert generated_units([5, 6]) == [3, 4]
    assert generated_units([1, 7]) == []


def test_generation_is_seeded_and_shaped(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    pairs = write_pairs(tmp_path / "pairs.parquet", 3)
    kwargs = dict(n_prompts=2, prompt_s=1.0, max_new_tokens=12, seed=5, device="cpu")
    first = generate_continuations(ckpt, pairs, **kwargs)
    again = generate_continuations(ckpt, pairs, **kwargs)
    assert first == again
    assert [r["pair_id"] for r in first] == ["s0", "s1"]
    # 1.0 s = 25 frames, durations of 3 frames -> units starting at frames 0..24 -> 9 units
    assert first[0]["prompt_units"] == [(0 + k) % 500 for k in range(9)]
    assert all(0 < len(r["generated_units"]) <= 12 for r in first)
    assert all(0 <= u < 500 for r in first for u in r["generated_units"])
    other_seed = generate_continuations(ckpt, pairs, **{**kwargs, "seed": 6})
    assert other_seed != first
    # prompt i uses seed + i, so asking for fewer prompts does not change the first row
    assert generate_continuations(ckpt, pairs, **{**kwargs, "n_prompts": 1}) == first[:1]


def test_generation_stops_at_eos(tmp_path: Path) -> None:
    ckpt = eos_after_unit0_checkpoint(tmp_path / "ckpt")
    pairs = write_pairs(tmp_path / "pairs.parquet", 1)
    rows = generate_continuations(ckpt, pairs, n_prompts=1, prompt_s=0.04, max_new_tokens=20, seed=0,
                                  device="cpu", top_k=1)
    # prompt [BOS, unit 0] -> next token is EOS with p≈1: empty continuation
    assert rows == [{"pair_id": "s0", "prompt_units": [0], "generated_units": []}]


def test_write_generations_is_json_roundtrip(tmp_path: Path) -> None:
    rows = [{"pair_id": "a", "prompt_units": [1, 2], "generated_units": [3]}]
    out = write_generations(rows, tmp_path / "gen" / "generations.json")
    assert json.loads(out.read_text()) == rows
    assert [p.name for p in out.parent.iterdir()] == ["generations.json"]   # no temp file left behind
