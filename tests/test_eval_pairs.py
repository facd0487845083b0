"""Pair scoring against hand-computed log-probabilities, Wilson intervals and published-layout readers."""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from slam_core.corpora.published_layout import load_published_pairs  # noqa: E402
from slam_core.eval.pairs import (  # noqa: E402
    CheckpointNotFoundError, evaluate_pairs, measure_pairs_per_s, pair_outcomes,
    score_sequences, wilson_interval,
)
from slam_core.schemas import EVAL_PAIRS_UNITS  # noqa: E402

VOCAB = 502
LN_HALF = math.log(0.5)
# Bigram table used everywhere below: logit ln(501) on one next token makes it p = 501/1002 = 0.5 and every
# other token 1/1002; a row without a boosted entry is uniform, 1/502.
BOOSTED = {(1, 2): math.log(501), (2, 1): math.log(501)}  # BOS -> unit 0 (id 2); unit 0 -> EOS
LP_RARE = math.log(1 / 1002)   # non-boosted token after a boosted row
LP_UNIFORM = math.log(1 / 502)


class BigramLM(torch.nn.Module):
    """Fixed next-token logits that depend only on the current token, with the HF causal-LM call signature."""

    def __init__(self, table: dict[tuple[int, int], float]) -> None:
        super().__init__()
        logits = torch.zeros(VOCAB, VOCAB)
        for (prev, nxt), value in table.items():
            logits[prev, nxt] = value
        self.table = torch.nn.Parameter(logits, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, use_cache=None):  # noqa: ANN001
        return SimpleNamespace(logits=self.table[input_ids])


def save_bigram_qwen2(out_dir: Path, table: dict[tuple[int, int], float]) -> Path:
    """A real Qwen2 checkpoint whose logits are the bigram table: attention/MLP outputs are zeroed, token a's
    embedding is the basis vector e_a, so the final RMSNorm gives sqrt(H)·e_a and lm_head column a holds the row."""
    hidden = 64
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-12)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for token in {a for a, _ in table}:
            assert token < hidden
            model.model.embed_tokens.weight[token, token] = 1.0
        for (prev, nxt), value in table.items():
            model.lm_head.weight[nxt, prev] = value / math.sqrt(hidden)
    model.save_pretrained(out_dir)
    return out_dir


def write_pairs(path: Path, pairs: list[tuple[list[int], list[int]]], set_name: str = "tsc_like") -> Path:
    rows = {"pair_id": [f"p{i}" for i in range(len(pairs))], "set": [set_name] * len(pairs),
            "positive_units": [p for p, _ in pairs], "positive_durations": [[2] * len(p) for p, _ in pairs],
            "negative_units": [n for _, n in pairs], "negative_durations": [[2] * len(n) for _, n in pairs]}
    pq.write_table(pa.Table.from_pydict(rows, schema=EVAL_PAIRS_UNITS), path)
    return path


# pos beats neg, exact tie, neg beats pos -> accuracy (1 + 0.5 + 0) / 3
HAND_PAIRS = [([0], [1]), ([3], [4]), ([1], [0])]
EXPECTED_POS = [LN_HALF, (LP_RARE + LP_UNIFORM) / 2, (LP_RARE + LP_UNIFORM) / 2]
EXPECTED_NEG = [(LP_RARE + LP_UNIFORM) / 2, (LP_RARE + LP_UNIFORM) / 2, LN_HALF]


def test_score_sequences_matches_hand_computed_logprobs() -> None:
    model = BigramLM(BOOSTED)
    seqs = [np.array([1, 2, 1]), np.array([1, 3, 1]), np.array([1, 2, 2, 1]), np.array([1, 5])]
    scores = score_sequences(model, seqs, batch_size=3, device="cpu")
    # [1,2,2,1]: p(2|1)=.5, p(2|2)=1/1002, p(1|2)=.5 ; [1,5]: only p(5|1)=1/1002 (no EOS in this sequence)
    expected = [LN_HALF, (LP_RARE + LP_UNIFORM) / 2, (2 * LN_HALF + LP_RARE) / 3, LP_RARE]
    np.testing.assert_allclose(scores, expected, atol=1e-5)  # float32 logits


def test_score_sequences_is_batch_invariant_and_keeps_input_order() -> None:
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    rng = np.random.default_rng(0)
    seqs = [np.concatenate([[1], rng.integers(2, VOCAB, size=n), [1]]) for n in rng.integers(1, 40, size=13)]
    one_by_one = score_sequences(model, seqs, batch_size=1, device="cpu")
    batched = score_sequences(model, seqs, batch_size=5, device="cpu")
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    reversed_scores = score_sequences(model, seqs[::-1], batch_size=4, device="cpu")
    np.testing.assert_allclose(reversed_scores[::-1], one_by_one, atol=1e-5)


def test_pair_outcomes_count_ties_as_half() -> None:
    out = pair_outcomes(np.array(EXPECTED_POS), np.array(EXPECTED_NEG))
    assert out.tolist() == [1.0, 0.5, 0.0]


def test_wilson_interval_known_values() -> None:
    assert wilson_interval(7, 10) == pytest.approx((0.39677, 0.89221), abs=1e-5)   # textbook example
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.27754, abs=1e-5)
    assert wilson_interval(1.5, 3) == pytest.approx((0.12533, 0.87467), abs=1e-5)  # half-tie mean as p-hat
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_evaluate_pairs_on_checkpoint_with_known_logits(tmp_path: Path) -> None:
    ckpt = save_bigram_qwen2(tmp_path / "ckpt", BOOSTED)
    pairs = write_pairs(tmp_path / "pairs.parquet", HAND_PAIRS)
    result = evaluate_pairs(ckpt, pairs, batch_size=2, device="cpu")
    assert result["metric"] == "tsc_like" and result["n"] == 3
    assert result["accuracy"] == pytest.approx(0.5)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((0.12533, 0.87467), abs=1e-5)
    np.testing.assert_allclose([p["pos"] for p in result["per_pair"]], EXPECTED_POS, atol=1e-4)
    np.testing.assert_allclose([p["neg"] for p in result["per_pair"]], EXPECTED_NEG, atol=1e-4)
    assert result["per_pair"][1]["pos"] == result["per_pair"][1]["neg"]  # the tie is exact, not approximate
    assert result["pairs_per_s"] > 0 and result["skipped"] == []


def test_evaluate_pairs_skips_empty_pairs_and_reports_them(tmp_path: Path) -> None:
    ckpt = save_bigram_qwen2(tmp_path / "ckpt", BOOSTED)
    pairs = write_pairs(tmp_path / "pairs.parquet", [([0], [1]), ([], [1]), ([1], [0])])
    result = evaluate_pairs(ckpt, pairs, device="cpu")
    assert result["n"] == 2 and result["accuracy"] == pytest.approx(0.5)
    assert result["skipped"] == [{"pair_id": "p1", "reason": "empty_units", "path": str(pairs)}]


def test_missing_checkpoint_gives_one_clear_error(tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs.parquet", HAND_PAIRS)
    with pytest.raises(CheckpointNotFoundError, match="slprl/no-such-model.*local save_pretrained directory"):
        evaluate_pairs("slprl/no-such-model", pairs, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="no config.json"):
        evaluate_pairs(tmp_path / "empty", pairs, device="cpu")


def test_measure_pairs_per_s_reports_positive_rate() -> None:
    rows = [{"positive_units": [0, 5, 7], "negative_units": [1, 2]}] * 8
    bench = measure_pairs_per_s(BigramLM(BOOSTED), rows, batch_size=4, device="cpu", n_repeats=2)
    assert bench["n_pairs"] == 8 and bench["pairs_per_s"] > 0 and bench["best_s"] <= bench["median_s"]


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_sblimp_layout_sorts_numerically_within_each_subfolder(tmp_path: Path) -> None:
    names = ["a/10+x_ok.wav", "a/11+x_bad.wav", "a/2+y_ok.wav", "a/3+y_bad.wav", "b/0+z_ok.wav", "b/1+z_bad.wav"]
    paths = {n: _touch(tmp_path / n) for n in names}
    pairs = load_published_pairs(tmp_path, "sblimp")
    # numeric, not lexicographic (2,3 before 10,11), and pairs never cross a sub-folder
    assert pairs == [(paths["a/2+y_ok.wav"], paths["a/3+y_bad.wav"]), (paths["a/10+x_ok.wav"], paths["a/11+x_bad.wav"]),
                     (paths["b/0+z_ok.wav"], paths["b/1+z_bad.wav"])]


def test_subfolders_that_each_restart_numbering_pair_within_each_subfolder(tmp_path: Path) -> None:
    # sWUGGY as published: every sub-folder numbers its files from 0 (SlamKit's ModellingMetricDataset pairs
    # each sub-folder's sorted list on its own); the same numbers in two sub-folders are not duplicates.
    for folder in ("x", "y"):
        for i, word in enumerate(["brick", "brock", "stone", "stane"]):
            _touch(tmp_path / folder / f"{i}_{word}.wav")
    pairs = load_published_pairs(tmp_path, "swuggy_inter")
    assert [(p.parent.name, p.name, n.name) for p, n in pairs] == [
        ("x", "0_brick.wav", "1_brock.wav"), ("x", "2_stone.wav", "3_stane.wav"),
        ("y", "0_brick.wav", "1_brock.wav"), ("y", "2_stone.wav", "3_stane.wav")]
    _touch(tmp_path / "y" / "4_odd.wav")
    with pytest.raises(ValueError, match="odd number of files"):
        load_published_pairs(tmp_path, "swuggy_inter")


def test_flat_storycloze_layout_and_errors(tmp_path: Path) -> None:
    for name in ["0_story_a.wav", "1_story_a.wav", "9_story_b.wav", "12_story_b.wav"]:
        _touch(tmp_path / "ssc" / name)
    pairs = load_published_pairs(tmp_path / "ssc", "ssc")
    assert [(p.name, n.name) for p, n in pairs] == [("0_story_a.wav", "1_story_a.wav"), ("9_story_b.wav", "12_story_b.wav")]
    _touch(tmp_path / "ssc" / "x_bad.wav")
    with pytest.raises(ValueError, match="x_bad.wav: file name has no integer"):
        load_published_pairs(tmp_path / "ssc", "ssc")
    for name in ["1_a.wav", "1_b.wav"]:
        _touch(tmp_path / "dup" / name)
    with pytest.raises(ValueError, match="duplicate integer prefixes"):
        load_published_pairs(tmp_path / "dup", "tsc")
    with pytest.raises(FileNotFoundError, match="eval.reference_path"):
        load_published_pairs(tmp_path / "nowhere", "tsc")


def test_salmon_layout_groups_by_sample_index(tmp_path: Path) -> None:
    part = tmp_path / "salmon" / "gender"
    for i in [0, 1, 10]:
        for j in [1, 0]:
            _touch(part / f"sample_{i}_{j}.wav")
    pairs = load_published_pairs(part, "salmon")
    assert [(p.name, n.name) for p, n in pairs] == [
        ("sample_0_0.wav", "sample_0_1.wav"), ("sample_1_0.wav", "sample_1_1.wav"), ("sample_10_0.wav", "sample_10_1.wav")]
    (part / "sample_10_1.wav").unlink()
    with pytest.raises(ValueError, match="sample 10 has variants"):
        load_published_pairs(part, "salmon")
