"""Cross-modal StoryCloze: the published layout (written by espeak as the offline stand-in), tokenised with the tiny
encoder, scored by a tiny interleaved LM in every prompt/ending modality pair."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from slam_core.config import ModelConfig, SynthConfig, UnitsConfig  # noqa: E402
from slam_core.eval.cross_modal import (  # noqa: E402
    evaluate_cross_modal, item_sequences, list_cross_modal, metric_name, read_cross_modal, tokenise_cross_modal,
    write_cross_modal_layout,
)
from slam_core.lm.interleave import InterleavingTokenizer  # noqa: E402
from slam_core.lm.interleave_model import init_interleaved_lm  # noqa: E402
from slam_core.lm.model import load_lm, resolve_base  # noqa: E402
from slam_core.lm.text_tokenizer import load_text_tokenizer, tiny_tokenizer_dir  # noqa: E402
from slam_core.synth.backends import get_backend  # noqa: E402
from slam_core.synth.shards import speak_16k  # noqa: E402

ITEMS = [
    ("s0", "Tom lost his red ball in the park.", "He looked for it and found it.", "The moon was made of cheese."),
    ("s1", "Anna baked a cake for her mom.", "Her mom smiled and ate a slice.", "The car drove into the sea."),
    ("s2", "The dog was hungry after the walk.", "It ate all of its food.", "A bird flew to the library."),
]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    backend = get_backend(SynthConfig(backend="espeak", voices=["en-us"]))
    return write_cross_modal_layout(ITEMS, lambda text: speak_16k(backend, text, "en-us", 16000)[0],
                                    tmp_path_factory.mktemp("cross_ms_tSC"))


@pytest.fixture(scope="module")
def units_rows(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    from slam_core.units import extract

    root = tmp_path_factory.mktemp("data")
    cfg = UnitsConfig(encoder="tiny", layer=2, n_units=500, batch_size=4)
    extractor = extract.build_extractor(cfg, root, centroids=None, device="cpu")
    feats = np.concatenate(extractor.features([sf.read(p, dtype="float32")[0] for p in sorted(layout.rglob("*.wav"))]))
    centroids = root / "centroids.npy"
    np.save(centroids, feats[np.random.default_rng(0).choice(len(feats), 500, replace=True)].astype(np.float32))
    extractor = extract.build_extractor(cfg, root, centroids=centroids, device="cpu")
    out = tokenise_cross_modal(layout, extractor, 4, root / "cm.parquet")
    assert out["rows"] == 3 and out["bad"] == []
    return read_cross_modal(out["path"])


@pytest.fixture(scope="module")
def tiny_interleaved(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lm")
    texts = [" ".join(item[1:]) for item in ITEMS] * 3
    text_tok = load_text_tokenizer(tiny_tokenizer_dir(root, texts, vocab_size=300))
    cfg = ModelConfig(base="tiny-qwen2", context_len=256, dtype="float32", tiny_hidden_size=64, tiny_layers=2)
    out = init_interleaved_lm(cfg, resolve_base(cfg, root), text_tok, root / "init", seed=0)
    return load_lm(out["path"]).eval(), InterleavingTokenizer(text_tok)


def test_layout_listing(layout: Path, tmp_path: Path) -> None:
    assert [i for i, _ in list_cross_modal(layout)] == ["stand_in/s0", "stand_in/s1", "stand_in/s2"]
    (tmp_path / "x_correct.wav").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="x lacks x_mutual.wav, x_mutual.txt, x_correct.txt, x_incorrect.wav"):
        list_cross_modal(tmp_path)
    with pytest.raises(FileNotFoundError, match="no \\*_correct.wav"):
        list_cross_modal(tmp_path / "nothing")


def test_sequences_put_prompt_and_ending_in_their_modalities(units_rows: list[dict], tiny_interleaved) -> None:
    _, tok = tiny_interleaved
    row = units_rows[0]
    assert row["mutual_text"] == ITEMS[0][1] and len(row["correct_units"]) > 10
    pos, neg = item_sequences(tok, row, "text", "speech")
    (m1, words), (m2, units) = tok.decode(pos)
    assert (m1, m2) == ("text", "speech") and words == ITEMS[0][1].split()
    assert units.tolist() == row["correct_units"]
    (m1, units), (m2, words) = tok.decode(item_sequences(tok, row, "speech", "text")[1])
    assert (m1, m2, units.tolist(), words) == ("speech", "text", row["mutual_units"], ITEMS[0][3].split())
    assert tok.decode(item_sequences(tok, row, "text", "text")[0]) == [
        ("text", f"{ITEMS[0][1]} {ITEMS[0][2]}".split())]
    [(m, units)] = tok.decode(item_sequences(tok, row, "speech", "speech")[0])
    joined = row["mutual_units"] + row["correct_units"][int(row["mutual_units"][-1] == row["correct_units"][0]):]
    assert m == "speech" and units.tolist() == joined
    with pytest.raises(ValueError, match="modality 'audio'"):
        metric_name("audio", "text")


@pytest.mark.parametrize("prompt,ending", [("text", "speech"), ("speech", "text"), ("text", "text"),
                                           ("speech", "speech")])
def test_cross_modal_storycloze_scores_every_modality_pair(units_rows, tiny_interleaved, prompt, ending) -> None:
    model, tok = tiny_interleaved
    out = evaluate_cross_modal(model, tok, units_rows, prompt, ending, batch_size=2)
    assert out["metric"] == metric_name(prompt, ending) and out["n"] == 3
    assert 0.0 <= out["ci_low"] <= out["accuracy"] <= out["ci_high"] <= 1.0
    assert [p["pair_id"] for p in out["per_pair"]] == ["stand_in/s0", "stand_in/s1", "stand_in/s2"]
    assert all(np.isfinite(p["pos"]) and p["pos"] < 0 for p in out["per_pair"])
    # batch composition does not change the scores (up to float noise)
    alone = evaluate_cross_modal(model, tok, units_rows[:1], prompt, ending, batch_size=1)
    assert alone["per_pair"][0]["pos"] == pytest.approx(out["per_pair"][0]["pos"], abs=1e-5)
