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
    generate_continuations, generate_from_prompts, generated_units, penalise_repeats, prompt_seed, prompt_units,
    sample_batch, write_generations,
)
from slam_core.lm.vocab import EOS_ID, PAD_ID, encode_units  # noqa: E402
from slam_core.schemas import EVAL_PAIRS_UNITS  # noqa: E402


def tiny_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=502, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    Qwen2ForCausalLM(cfg).save_pretrained(out_dir)
    return out_dir


def transition_checkpoint(out_dir: Path, next_token: dict[int, int]) -> Path:
    """Qwen2 whose next token depends only on the current one: token a -> next_token[a] with p≈1 (attention
    and MLP outputs zeroed, one-hot embeddings, the lm_head holding the transition table)."""
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
        for current, following in next_token.items():
            model.lm_head.weight[following, current] = 40.0 / math.sqrt(hidden)
    model.save_pretrained(out_dir)
    return out_dir


def eos_after_unit0_checkpoint(out_dir: Path) -> Path:
    """After BOS -> unit 0 (id 2), after unit 0 -> EOS."""
    return transition_checkpoint(out_dir, {1: 2, 2: 1})


def successor_checkpoint(out_dir: Path, last_unit: int = 8) -> Path:
    """Unit u -> unit u + 1 up to `last_unit`, then EOS."""
    return transition_checkpoint(out_dir, {**{u + 2: u + 3 for u in range(last_unit)}, last_unit + 2: EOS_ID})


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


def _tiny_model(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=502, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg).eval()


def _prompts(n: int) -> list[list[int]]:
    """Prompts of different lengths (3..3+5(n-1) units), so batches are left-padded."""
    return [[(7 * i + 3 * k) % 500 for k in range(3 + 5 * i)] for i in range(n)]


def test_greedy_batched_equals_one_at_a_time_and_hf_generate(one_torch_thread: None) -> None:
    model, prompts = _tiny_model(), _prompts(5)
    kwargs = dict(temperature=1.0, top_k=1, max_new_tokens=24, repetition_penalty=1.3)
    batched = sample_batch(model, prompts, [0] * 5, **kwargs)
    alone = [sample_batch(model, [p], [0], **kwargs)[0] for p in prompts]
    assert batched == alone
    assert all(len(row) == 24 for row in batched)  # a random model never says EOS first
    # the reference: HF greedy generate with the same repetition penalty, one prompt at a time
    for prompt, row in zip(prompts, batched):
        ids = torch.as_tensor(encode_units(prompt, add_bos=True, add_eos=False))[None]
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                             repetition_penalty=1.3, eos_token_id=EOS_ID, pad_token_id=PAD_ID, top_k=None, top_p=None)
        assert generated_units(out[0, ids.shape[1]:].numpy()) == row


def test_sampling_is_per_row_seeded_whatever_the_batch(one_torch_thread: None) -> None:
    model, prompts = _tiny_model(), _prompts(6)
    seeds = [prompt_seed(3, f"p{i}") for i in range(6)]
    kwargs = dict(temperature=0.8, top_k=25, max_new_tokens=20, repetition_penalty=1.1)
    batched = sample_batch(model, prompts, seeds, **kwargs)
    assert sample_batch(model, prompts, seeds, **kwargs) == batched                     # rerun: same tokens
    assert [sample_batch(model, [p], [s], **kwargs)[0] for p, s in zip(prompts, seeds)] == batched
    reordered = sample_batch(model, prompts[::-1], seeds[::-1], **kwargs)[::-1]         # other batch neighbours
    assert reordered == batched
    assert sample_batch(model, prompts, [s + 1 for s in seeds], **kwargs) != batched    # the seed matters
    assert len({tuple(r) for r in batched}) == 6


def test_prompt_seed_depends_on_seed_and_prompt_id() -> None:
    assert prompt_seed(0, "a") == prompt_seed(0, "a")
    assert len({prompt_seed(0, "a"), prompt_seed(1, "a"), prompt_seed(0, "b")}) == 3
    assert 0 <= prompt_seed(2**40, "x" * 100) < 2**63


def test_rows_stop_independently_at_eos(tmp_path: Path, one_torch_thread: None) -> None:
    ckpt = successor_checkpoint(tmp_path / "ckpt", last_unit=8)
    prompts = [{"pair_id": "a", "prompt_units": [3]}, {"pair_id": "b", "prompt_units": [5, 0]},
               {"pair_id": "c", "prompt_units": [8]}, {"pair_id": "d", "prompt_units": [6, 6, 6, 6, 6, 6]}]
    rows = generate_from_prompts(ckpt, prompts, max_new_tokens=20, device="cpu", batch_size=4)
    # unit u -> u+1 ... 8 -> EOS; each row ends at its own EOS while the others go on
    assert [r["generated_units"] for r in rows] == [[4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8], [], [7, 8]]
    assert [r["pair_id"] for r in rows] == ["a", "b", "c", "d"]   # input order, whatever the length grouping
    capped = generate_from_prompts(ckpt, prompts, max_new_tokens=3, device="cpu", batch_size=3)
    assert [r["generated_units"] for r in capped] == [[4, 5, 6], [1, 2, 3], [], [7, 8]]


def test_generation_file_is_byte_identical_across_batch_sizes(tmp_path: Path, one_torch_thread: None) -> None:
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    pairs = write_pairs(tmp_path / "pairs.parquet", 5)
    kwargs = dict(n_prompts=5, prompt_s=0.5, max_new_tokens=10, seed=7, device="cpu")
    paths = []
    for name, batch_size in (("b1", 1), ("b4", 4), ("b4-again", 4), ("b32", 32)):
        rows = generate_continuations(ckpt, pairs, batch_size=batch_size, **kwargs)
        paths.append(write_generations(rows, tmp_path / f"{name}.json"))
    assert len({p.read_bytes() for p in paths}) == 1
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        generate_continuations(ckpt, pairs, batch_size=0, **kwargs)


def test_repetition_penalty_matches_hf_processor() -> None:
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(0)
    logits, history = torch.randn(3, 502), torch.randint(0, 502, (3, 40))
    seen = torch.zeros(3, 502, dtype=torch.bool).scatter_(1, history, True)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(history, logits.clone())
    assert torch.equal(penalise_repeats(logits, seen, 1.3), expected)
    assert torch.equal(penalise_repeats(logits, seen, 1.0), logits)


def test_static_kv_cache_gives_the_dynamic_cache_samples(one_torch_thread: None) -> None:
    model, prompts = _tiny_model(), _prompts(6)
    seeds = [prompt_seed(5, f"p{i}") for i in range(6)]
    kwargs = dict(temperature=0.8, top_k=25, max_new_tokens=20, repetition_penalty=1.1)
    dynamic = sample_batch(model, prompts, seeds, **kwargs)
    static = sample_batch(model, prompts, seeds, kv_cache="static", **kwargs)
    assert static == dynamic
    assert [sample_batch(model, [p], [s], kv_cache="static", **kwargs)[0] for p, s in zip(prompts, seeds)] == static
    greedy = dict(temperature=1.0, top_k=1, max_new_tokens=12, repetition_penalty=1.3)
    assert sample_batch(model, prompts, [0] * 6, kv_cache="static", **greedy) == sample_batch(model, prompts, [0] * 6, **greedy)
    with pytest.raises(ValueError, match="kv_cache='paged'"):
        sample_batch(model, prompts, seeds, kv_cache="paged", **kwargs)
