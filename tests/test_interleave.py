"""The interleaving tokenizer: joint vocabulary layout, seeded span choice (poisson, span, random), speech runs cut
at word times, and decoding an interleaved sequence back to its words and units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slam_core.lm.interleave import (
    InterleavingTokenizer, Span, item_rng, plan_spans, poisson_spans, speech_mask,
)
from slam_core.lm.text_tokenizer import build_tiny_tokenizer, load_text_tokenizer, tiny_tokenizer_dir

STORY = ("Once upon a time, a little girl named Lily found a shiny red ball in the park. She played with it all day "
         "and her dog Max ran after it. When the sun went down, they walked home happy and tired.")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tok")
    texts = [STORY, "The cat sat on the warm mat.", "A bird sang a song in the tall green tree."] * 4
    return load_text_tokenizer(tiny_tokenizer_dir(root, texts, vocab_size=400))


def _utterance(n_words_units: int = 3) -> tuple[list, np.ndarray, np.ndarray]:
    """STORY's words, each 0.36 s long after a 0.2 s lead-in, and deduplicated units of 3 frames (0.12 s) each."""
    words = [(w, round(0.2 + 0.36 * i, 4), round(0.2 + 0.36 * (i + 1), 4)) for i, w in enumerate(STORY.split())]
    n_units = int(np.ceil((words[-1][2] + 0.3) / 0.12))
    units = np.random.default_rng(0).integers(0, 500, n_units)
    return words, units, np.full(n_units, n_words_units)


def test_vocabulary_layout(tokenizer) -> None:
    tok = InterleavingTokenizer(tokenizer)
    v = tok.vocab
    n = len(tokenizer)  # at most the 400 asked for (the small corpus runs out of merges)
    assert 300 < n <= 400 and v.n_text == v.unit_offset == n
    assert (v.speech_id, v.text_id, v.size) == (n + 500, n + 501, n + 502)
    assert v.bos_id == v.eos_id == tokenizer.eos_token_id
    assert tok.encode_speech([0, 499]).tolist() == [v.bos_id, n + 500, n, n + 499, v.eos_id]
    text = tok.encode_text("Lily found a ball.")
    assert text[1] == v.text_id and max(text[2:-1]) < n
    assert tok.decode(text) == [("text", ["Lily", "found", "a", "ball."])]
    with pytest.raises(ValueError, match="unit ids"):
        tok.unit_ids([500])


def test_interleaved_sequence_decodes_to_its_words_and_units(tokenizer) -> None:
    words, units, durations = _utterance()
    tok = InterleavingTokenizer(tokenizer, method="poisson", span=10, prob=0.3, seed=7)
    spans = tok.plan(words, durations, "seg-0")
    ids = tok.encode_interleaved(words, units, durations, "seg-0")
    assert {s.modality for s in spans} == {"text", "speech"}
    assert ids[0] == tok.vocab.bos_id and ids[-1] == tok.vocab.eos_id
    decoded = tok.decode(ids)
    assert len(decoded) == len(spans)
    ends = np.cumsum(durations) * 0.04
    for (modality, content), span in zip(decoded, spans):
        assert modality == span.modality
        if modality == "text":
            assert content == [w for w, _, _ in words[span.word_lo:span.word_hi]]
        else:
            np.testing.assert_array_equal(content, units[span.unit_lo:span.unit_hi])
            # exactly the units whose frame end lies within the run's words
            start, end = words[span.word_lo][1], words[span.word_hi - 1][2]
            inside = np.flatnonzero((ends >= start - 1e-9) & (ends <= end + 1e-9))
            assert (span.unit_lo, span.unit_hi) == (inside[0], inside[-1] + 1)
    # spans tile the words in order
    assert [(s.word_lo, s.word_hi) for s in spans] == list(zip([0] + [s.word_hi for s in spans[:-1]],
                                                               [s.word_hi for s in spans]))
    assert spans[-1].word_hi == len(words)


def test_spans_are_seeded_and_deterministic(tokenizer) -> None:
    words, units, durations = _utterance()
    a = InterleavingTokenizer(tokenizer, seed=1)
    assert np.array_equal(a.encode_interleaved(words, units, durations, "k"),
                          InterleavingTokenizer(tokenizer, seed=1).encode_interleaved(words, units, durations, "k"))
    masks = {tuple(InterleavingTokenizer(tokenizer, seed=s).speech_mask(200, "k")) for s in range(5)}
    masks |= {tuple(a.speech_mask(200, f"k{i}")) for i in range(5)}
    assert len(masks) == 10  # seed and key both change the choice


def test_poisson_matches_slamkit_statistics() -> None:
    fractions, lengths = [], []
    for i in range(40):
        mask = poisson_spans(500, 10, 0.3, item_rng(0, str(i)))
        fractions.append(mask.mean())
        lengths += [hi - lo for m, lo, hi in _runs(mask) if m]
    assert 0.3 <= np.mean(fractions) <= 0.33  # ceil(0.3 n) words, the last span may overshoot
    assert 8.5 <= np.mean(lengths) <= 12  # Poisson(10) spans (two touching spans read as one run)
    assert not poisson_spans(0, 10, 0.3, item_rng(0, "x")).size
    assert poisson_spans(3, 10, 1.0, item_rng(0, "x")).all()  # spans longer than the utterance are cut at its end


def _runs(mask):
    out = []
    for i, m in enumerate(mask):
        if out and out[-1][0] == m:
            out[-1][2] = i + 1
        else:
            out.append([m, i, i + 1])
    return out


def test_random_and_span_methods() -> None:
    assert 0.45 < speech_mask(4000, "random", 10, 0.3, item_rng(0, "r")).mean() < 0.55
    mask = speech_mask(4000, "span", 5, 0.05, item_rng(0, "s"))
    # a run lasts at least `span` words (unless the utterance ends first)
    assert 0.15 < mask.mean() < 0.3 and min(hi - lo for m, lo, hi in _runs(mask) if m and hi < 4000) >= 5
    with pytest.raises(ValueError, match="interleave method"):
        speech_mask(3, "mixed", 10, 0.3, item_rng(0, "s"))


def test_untimed_words_at_a_speech_edge_move_to_text() -> None:
    words = [("a", 0.0, 0.4), ("b", None, None), ("c", 0.8, 1.2), ("d", None, None), ("e", 1.6, 2.0)]
    durations = np.full(50, 1)
    spans = plan_spans(words, durations, [False, True, True, True, False])
    assert spans == [Span("text", 0, 2), Span("speech", 2, 3, 19, 30), Span("text", 3, 5)]
    # an untimed word inside a run stays in speech; a run with nothing timed is text
    assert plan_spans(words, durations, [True, True, True, False, False])[0] == Span("speech", 0, 3, 0, 30)
    assert plan_spans(words, durations, [False, True, False, True, False]) == [Span("text", 0, 5)]
    # a run shorter than one unit is said in text
    assert plan_spans([("a", 0.0, 0.01)], [10], [True]) == [Span("text", 0, 1)]


def test_tiny_tokenizer_is_reproducible(tmp_path: Path) -> None:
    texts = [STORY, "The cat sat on the warm mat."]
    a = build_tiny_tokenizer(tmp_path / "a", texts, vocab_size=300)
    b = build_tiny_tokenizer(tmp_path / "b", texts, vocab_size=300)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    tok = load_text_tokenizer(a)
    assert tok.decode(tok.encode("Zebras quack, 42!")) == "Zebras quack, 42!"  # byte-level: any text round-trips


def test_interleaved_twist_init_keeps_text_rows_and_adds_units(tmp_path: Path, tokenizer) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slam_core.config import ModelConfig
    from slam_core.lm.interleave_model import init_interleaved_lm, read_vocab
    from slam_core.lm.model import resolve_base

    cfg = ModelConfig(base="tiny-qwen2", context_len=256, dtype="float32", tiny_hidden_size=64, tiny_layers=2)
    base = resolve_base(cfg, tmp_path)
    out = init_interleaved_lm(cfg, base, tokenizer, tmp_path / "init", seed=3)
    text_lm = AutoModelForCausalLM.from_pretrained(base)
    lm = AutoModelForCausalLM.from_pretrained(out["path"])
    vocab = read_vocab(out["path"])
    n = vocab.n_text
    assert lm.config.vocab_size == vocab.size == n + 502 and out["vocab"]["speech_id"] == n + 500
    emb, text_emb = lm.get_input_embeddings().weight, text_lm.get_input_embeddings().weight
    assert torch.equal(emb[:n], text_emb[:n])  # the text vocabulary is kept
    new = emb[n:]
    assert torch.allclose(new.mean(0), text_emb[:n].mean(0), atol=0.01) and new.std(0).mean() > 0.01
    assert lm.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # still tied
    layer = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(lm.state_dict()[layer], text_lm.state_dict()[layer])
    assert (lm.config.bos_token_id, lm.config.eos_token_id) == (vocab.bos_id, vocab.eos_id)
    # the directory carries its tokenizer; an interleaved sequence runs through the model
    tok = InterleavingTokenizer(AutoTokenizer.from_pretrained(out["path"]), seed=0)
    assert tok.vocab == vocab
    words, units, durations = _utterance()
    ids = torch.from_numpy(tok.encode_interleaved(words, units, durations, "seg"))[None]
    assert lm(ids).logits.shape == (1, ids.shape[1], vocab.size)
    again = init_interleaved_lm(cfg, base, tokenizer, tmp_path / "init2", seed=3)
    assert torch.equal(AutoModelForCausalLM.from_pretrained(again["path"]).get_input_embeddings().weight, emb)
