"""The steps of the interleaved path that the Prefect tasks call (`tasks/interleave.py`): the text tokenizer and
the TWIST init keeping it, token-docs shards of the three sets, and cross-modal StoryCloze (stand-in layout,
units, scores). Nothing here knows Prefect; caching and the catalog are the tasks' business.

The init directory (`interleave_model.init_interleaved_lm`) holds the model, the base tokenizer's files and
`interleave.json`, so it is the one source of the joint vocabulary for writing documents and for scoring a
checkpoint trained from it (checkpoints hold the model only).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from slam_core.config import InterleaveConfig, ModelConfig, SynthConfig, UnitsConfig
from slam_core.eval.cross_modal import (
    evaluate_cross_modal, read_cross_modal, tokenise_cross_modal, write_cross_modal_layout,
)
from slam_core.lm.interleave import InterleavingTokenizer
from slam_core.lm.interleave_data import (
    interleaved_documents, speech_documents, story_texts, text_documents, write_token_docs,
)
from slam_core.lm.interleave_model import init_interleaved_lm, read_vocab
from slam_core.lm.model import TINY_BASE_NAME, load_speech_lm, resolve_base
from slam_core.lm.text_tokenizer import load_text_tokenizer, tiny_tokenizer_dir

log = logging.getLogger(__name__)

MODALITY = {"t": "text", "s": "speech"}


def text_tokenizer_source(model_cfg: ModelConfig, data_root: str | Path, stories_path: str | Path,
                          vocab_size: int) -> str:
    """The base LM's tokenizer (hub id or local dir); for the tiny stand-in base, a byte-level BPE trained once on
    the corpus' training stories (`text_tokenizer.tiny_tokenizer_dir`)."""
    if model_cfg.base == TINY_BASE_NAME:
        texts = [text for _, text in story_texts(stories_path, "train")]
        return str(tiny_tokenizer_dir(Path(data_root) / "models", texts, vocab_size))
    return resolve_base(model_cfg, Path(data_root))


def init_lm(model_cfg: ModelConfig, data_root: str | Path, stories_path: str | Path, text_vocab_size: int,
            n_units: int, seed: int, out_dir: str | Path) -> dict[str, Any]:
    """TWIST init of the interleaved LM (text rows kept, unit and marker rows added), saved with its tokenizer."""
    base = resolve_base(model_cfg, Path(data_root))
    text_tok = load_text_tokenizer(text_tokenizer_source(model_cfg, data_root, stories_path, text_vocab_size))
    return init_interleaved_lm(model_cfg, base, text_tok, out_dir, n_units=n_units, seed=seed)


def tokenizer_of(init_dir: str | Path, cfg: InterleaveConfig, seed: int) -> InterleavingTokenizer:
    """The interleaving tokenizer of an init directory, with the run's span settings and seed."""
    vocab = read_vocab(init_dir)
    tok = InterleavingTokenizer(load_text_tokenizer(init_dir), vocab.n_units, cfg.method, cfg.span, cfg.prob, seed)
    if tok.vocab != vocab:
        raise ValueError(f"{init_dir}: its tokenizer gives {tok.vocab}, its interleave.json {vocab}")
    return tok


def write_docs(kind: str, inputs: dict[str, Any], out_path: str | Path, init_dir: str | Path,
               cfg: InterleaveConfig, seed: int) -> dict[str, Any]:
    """One TOKEN_DOCS shard: kind 'interleaved' (inputs: units, words shards), 'speech' (units) or 'text'
    (stories: a STORIES Parquet, its train split; optional lo/hi: a slice of its stories)."""
    tok = tokenizer_of(init_dir, cfg, seed)
    if kind == "interleaved":
        docs = interleaved_documents(inputs["units"], inputs["words"], tok)
    elif kind == "speech":
        docs = speech_documents(inputs["units"], tok)
    elif kind == "text":
        texts = story_texts(inputs["stories"], "train")[inputs.get("lo", 0):inputs.get("hi")]
        docs = text_documents(texts, tok)
    else:
        raise ValueError(f"document kind {kind!r}: expected interleaved, speech or text")
    return write_token_docs(docs, kind, out_path, tok.vocab.size)


def text_shard_ranges(stories_path: str | Path, per_shard: int) -> list[tuple[int, int]]:
    """(lo, hi) slices of the training stories, `per_shard` stories each (one text-docs shard per slice)."""
    import pyarrow.parquet as pq

    n = sum(1 for s in pq.read_table(stories_path, columns=["split"]).column(0).to_pylist() if s == "train")
    return [(lo, min(lo + per_shard, n)) for lo in range(0, n, per_shard)]


def layout_digest(layout_dir: str | Path) -> str:
    """Digest of a cross-modal layout's files (relative path, size, mtime): its units are made again when it
    changes."""
    import hashlib

    root = Path(layout_dir)
    stamp = [(f.relative_to(root).as_posix(), f.stat().st_size, f.stat().st_mtime_ns)
             for f in sorted(root.rglob("*")) if f.is_file() and f.suffix in (".wav", ".txt")]
    return hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]


def speak_stand_in(stories_path: str | Path, synth_cfg: SynthConfig, seed: int, out_dir: str | Path,
                   max_items: int | None = None) -> dict[str, Any]:
    """The cross-modal StoryCloze layout spoken from the held-out stories (the tSC-like items: prompt = all but
    the last sentence, endings = its own last sentence and another topic's), one voice, by synth.backend."""
    from slam_core.synth.backends import get_backend
    from slam_core.synth.dataset import story_pair_texts
    from slam_core.synth.shards import speak_16k
    from slam_core.synth.stinystories import read_stories

    items = story_pair_texts(read_stories(stories_path, "heldout"), seed)[:max_items]
    backend, voice = get_backend(synth_cfg), synth_cfg.voices[0]
    write_cross_modal_layout(items, lambda text: speak_16k(backend, text, voice, 16000)[0], out_dir)
    return {"path": str(out_dir), "rows": len(items)}


def tokenise_layout(layout_dir: str | Path, centroids: str | Path, units_cfg: UnitsConfig, data_root: str | Path,
                    device: str, out_path: str | Path) -> dict[str, Any]:
    """Units of every cross-modal item's three wavs (the run's encoder and centroids), texts kept."""
    from slam_core.units import extract

    extractor = extract.build_extractor(units_cfg, Path(data_root), centroids=Path(centroids), device=device)
    return tokenise_cross_modal(layout_dir, extractor, units_cfg.batch_size, out_path)


def modalities(metric: str) -> tuple[str, str]:
    """('text', 'speech') of 'cm_tsc_t2s', and so on."""
    code = metric.rpartition("_")[2]
    if len(code) != 3 or code[1] != "2" or code[0] not in MODALITY or code[2] not in MODALITY:
        raise ValueError(f"cross-modal metric {metric!r}: expected cm_tsc_<t|s>2<t|s>")
    return MODALITY[code[0]], MODALITY[code[2]]


def score_cross_modal(checkpoint: str | Path, init_dir: str | Path, units_path: str | Path, metrics: list[str],
                      cfg: InterleaveConfig, seed: int, batch_size: int, device: str) -> list[dict[str, Any]]:
    """Accuracy (with a 95 % interval and per-item scores) of one checkpoint on each cross-modal metric."""
    tok = tokenizer_of(init_dir, cfg, seed)
    rows = read_cross_modal(units_path)[:cfg.max_cross_modal_items]
    model = load_speech_lm(Path(checkpoint)).to(device).eval()
    with torch.no_grad():
        return [evaluate_cross_modal(model, tok, rows, *modalities(m), batch_size=batch_size, device=device)
                for m in metrics]


# ---- cross-modal generation (SlamKit's cm_generate; slam_core.eval.cm_generate) ------------------------------


def tokenise_cm_prompts(layout_dir: str | Path, n: int, prompt_s: float, centroids: str | Path,
                        units_cfg: UnitsConfig, data_root: str | Path, device: str,
                        out_path: str | Path) -> dict[str, Any]:
    """Units of the first `n` items' `_mutual.wav` cut at `prompt_s` on the waveform (SlamKit: no word alignment),
    written by `eval.prompts.tokenise_prompts` (segment_id = item id)."""
    from slam_core.audio.io import probe_audio
    from slam_core.eval.cm_generate import prompt_files
    from slam_core.eval.prompts import PromptSource, tokenise_prompts
    from slam_core.units import extract

    sources = [PromptSource(item_id, str(wav), float(probe_audio(wav).duration))
               for item_id, wav, _ in prompt_files(layout_dir, n)]
    extractor = extract.build_extractor(units_cfg, Path(data_root), centroids=Path(centroids), device=device)
    return tokenise_prompts(sources, extractor, units_cfg.batch_size, out_path, prompt_s, use_alignment=False)


def cm_generate(checkpoint: str | Path, init_dir: str | Path, prompts_path: str | Path, layout_dir: str | Path,
                cfg: InterleaveConfig, seed: int, batch_size: int, device: str) -> list[dict[str, Any]]:
    """Text continuations of the cut speech prompts by one checkpoint (sampling settings from `cfg`), each row
    with its item id, the prompt file's text (the whole `_mutual.txt`, for reading), units and continuation."""
    import pyarrow.parquet as pq

    from slam_core.eval.cm_generate import generate_text, prompt_files
    from slam_core.eval.pairs import load_causal_lm

    tok = tokenizer_of(init_dir, cfg, seed)
    texts = {item_id: text for item_id, _, text in prompt_files(layout_dir, cfg.cm_generate_prompts)}
    prompts = [{"item_id": r["segment_id"], "prompt_text": texts.get(r["segment_id"], ""), "cut_s": r["cut_s"],
                "prompt_units": list(r["units"])} for r in pq.read_table(prompts_path).to_pylist()]
    model = load_causal_lm(checkpoint, torch.device(device))
    return generate_text(model, tok, prompts, cfg.cm_generate_temperature, cfg.cm_generate_top_k,
                         cfg.cm_generate_max_new_tokens, seed, batch_size)
