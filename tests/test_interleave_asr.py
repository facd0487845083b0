"""Real speech as interleaved data (issue 27): a tiny LibriSpeech-layout corpus aligned by a tiny Whisper stand-in
(its decoder always says " the") runs through the interleaved flow beside the espeak sTinyStories layout: Whisper
word timestamps matched to the transcripts -> interleaved token docs holding transcript words in text spans and
units in speech spans -> pre-training on the mix; the share of words aligned is in the catalog. Also: a missing
Whisper stops `slam run` before any work with one line naming interleave.asr_model."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from corpus_fixtures import flac_bytes, tone, write_tree
from test_asr_genppl import save_the_whisper
from test_bad_input_cli import _one_error_line
from test_interleave_flow import TINY

from data_catalog import Catalog
from data_catalog.alignments import alignment_shares
from flows.cli import main
from slam_core.align.words import normalise_word

# Transcripts with "the" in them, so the stand-in's " the the ..." matches some of their words (the rest stay
# unaligned, as words a real Whisper misheard would).
TRANSCRIPTS = ["THE BOY SAW THE DOG AND THE CAT IN THE GARDEN", "THE GIRL FOUND THE BALL UNDER THE OLD TREE",
               "THE SUN WAS WARM AND THE BIRDS SANG ALL DAY"]


def librispeech_tree(root: Path, parts: tuple[str, ...] = ("train-clean-100", "dev-clean")) -> Path:
    """LibriSpeech/<part>/<spk>/<chap>/ with 3 s tones and TRANSCRIPTS as <spk>-<chap>.trans.txt."""
    members: dict[str, bytes] = {}
    for part in parts:
        for spk, chap in (("19", "198"), ("84", "121123")):
            lines = []
            for utt, text in enumerate(TRANSCRIPTS):
                utt_id = f"{spk}-{chap}-{utt:04d}"
                lines.append(f"{utt_id} {text}")
                members[f"LibriSpeech/{part}/{spk}/{chap}/{utt_id}.flac"] = flac_bytes(
                    tone(3.0, 180 + 30 * utt + int(spk), seed=utt))
            members[f"LibriSpeech/{part}/{spk}/{chap}/{spk}-{chap}.trans.txt"] = ("\n".join(lines) + "\n").encode()
    return write_tree(root, members)


def _overrides(ls_dir: Path, whisper: str) -> dict:
    return TINY | {
        "corpus.pretrain_sets": ["librispeech", "stinystories"], "corpus.librispeech_dir": str(ls_dir),
        "corpus.librispeech_train_parts": ["train-clean-100"], "corpus.librispeech_val_parts": ["dev-clean"],
        "interleave.interleaved_sets": ["stinystories", "librispeech"], "interleave.asr_model": whisper,
        "interleave.asr_max_tokens": 12, "interleave.cross_modal_metrics": ["cm_tsc_s2t"],
        "interleave.max_cross_modal_items": 4, "train.max_steps": 4,
        "train.dataset_weights": {"text": 0.2, "interleaved": 0.5, "speech": 0.3},
    }


@pytest.mark.slow
def test_librispeech_aligned_by_whisper_becomes_interleaved_docs(prefect_harness, tmp_path):
    from flows.reproduce import reproduce
    from slam_core.lm.interleave_stage import tokenizer_of
    from slam_core.presets import get_preset

    ls_dir = librispeech_tree(tmp_path / "LibriSpeech-copy")
    whisper = save_the_whisper(tmp_path / "the-whisper.pt")
    root = tmp_path / "data"
    overrides = _overrides(ls_dir, str(whisper))
    out = reproduce(preset="smoke_interleaved", overrides=overrides, data_root=str(root))
    assert [r["metric"] for r in out["results"]] == ["cm_tsc_s2t"]

    catalog = Catalog(root / "catalog.duckdb")
    shares = {(r["dataset"], r["split"]): r for r in alignment_shares(catalog)}
    ls = shares[("librispeech", "train-clean-100")]
    # 2 speakers x 3 transcripts; Whisper's "the"s match the transcripts' (18 of their 60 words at most)
    words = 2 * sum(len(t.split()) for t in TRANSCRIPTS)
    assert ls["source"] == "asr" and ls["segments"] == 6 and ls["words"] == words == 60
    assert 0 < ls["aligned"] <= 18 and ls["share_aligned"] == round(ls["aligned"] / words, 4)
    assert shares[("stinystories", "train")]["source"] == "synth"
    assert ("librispeech", "dev-clean") not in shares  # held-out sets are not interleaved
    assert list((root / "units" / "librispeech" / "train-clean-100").glob("words-*.parquet"))

    docs = [a for a in catalog.artifacts(stage="tokens") if a["dataset"] == "interleaved"]
    ls_docs = [a for a in docs if Path(a["path"]).name.startswith("librispeech-train-clean-100")]
    assert ls_docs and any(Path(a["path"]).name.startswith("stinystories") for a in docs)
    init_dir = next(a["path"] for a in catalog.artifacts(stage="models") if a["dataset"] == "interleaved-lm")
    icfg = get_preset("smoke_interleaved").interleave
    tok = tokenizer_of(init_dir, icfg, seed=get_preset("smoke_interleaved").run.seed)
    vocabulary = {normalise_word(w) for t in TRANSCRIPTS for w in t.split()}
    mixed = 0
    for row in pq.read_table([a["path"] for a in ls_docs]).to_pylist():
        runs = tok.decode(row["tokens"])
        text = [normalise_word(w) for kind, words in runs if kind == "text" for w in words]
        speech = [u for kind, units in runs if kind == "speech" for u in units.tolist()]
        assert text and set(text) <= vocabulary  # every text token decodes to the transcript's words
        assert all(0 <= u < 64 for u in speech)
        mixed += bool(speech)
    assert mixed >= 1  # at least one utterance has a speech span: transcript words interleaved with its units
    assert out["checkpoints"] and Path(out["checkpoints"][0]).exists()

    # a rerun reuses the Whisper alignments (catalog check), not a second pass over the audio
    again = reproduce(preset="smoke_interleaved", overrides=overrides, data_root=str(root))
    assert again["checkpoints"] == out["checkpoints"]


def test_missing_whisper_for_alignment_is_one_line_naming_the_field(tmp_path, capsys):
    rc = main(["run", "reproduce", "--preset", "smoke_interleaved", "--data-root", str(tmp_path / "data"),
               "--set", 'corpus.pretrain_sets=["librispeech","stinystories"]',
               "--set", 'interleave.interleaved_sets=["stinystories","librispeech"]',
               "--set", f"interleave.asr_model={tmp_path / 'no-such-whisper.pt'}"])
    assert rc == 2
    line = _one_error_line(capsys)
    assert "Whisper for the word alignments of librispeech — --set interleave.asr_model —" in line
    assert "local checkpoint file" in line and not (tmp_path / "data" / "catalog.duckdb").exists()
