"""Cross-modal generation for interleaved LMs: a speech prompt -> a text continuation (SlamKit's `cm_generate`,
`config/metric/cm_generate.yaml` + `slamkit/metric/cross_modal_generation.py`, slp-rl/slamkit@388b402).

What SlamKit does (each value is also a row of docs/recipe.md's audit table):
- prompts: `num_files` 5 files of the glob `metric.data_path` (no default; iglob order); here the first
  `interleave.cm_generate_prompts` items of the cross-modal StoryCloze layout, sorted, their `{base}_mutual.wav`
  (the shared story prompt), so the offline stand-in layout serves too;
- the prompt is the wav's first `prompt_length` 3 s (`w[:int(3 * 16000)]`, cut on the waveform, no word
  alignment), then units (deduplicated) as `<speech> u... <text>`: the `<text>` marker asks for text
  (`build_prompt(output_modality=TEXT)`), and a trailing EOS is dropped. SlamKit's Qwen2.5 tokenizer adds no
  BOS; here BOS opens the prompt because every training document opens with it (`lm/interleave.py`);
- sampling: HF `generate` with temperature 0.8, top_k 25, max_new_tokens 150, do_sample, no repetition penalty,
  and `bad_words_ids` = every unit token (`get_ignore_tokens('TEXT')`: the markers and EOS stay allowed);
  SlamKit draws unseeded, here each prompt has its own seeded sampler (`generate.prompt_seed`);
- decoding (`decode_sample(output_modality=TEXT)`, remove_prompt False): the whole sequence minus PAD/BOS/EOS,
  both markers and unit tokens, decoded by the text tokenizer, so the prompt's units vanish and the string is
  the continuation alone;
- SlamKit computes no number: `cli/eval.py` only writes each string to `generated/generate_<i>.txt`.

Added here (so the run has a number to compare): GenPPL of each continuation under the speech-only GenPPL's
judge LM (`eval.ppl_lm`, `text_metrics.transcript_nll`, the same code and BOS rule) and auto-BLEU (bigrams),
summarised by `genppl.summarize_generation` exactly as the speech GenPPL is. The continuation is scored alone,
without the prompt's words (the model heard 3 s of speech whose transcript is not known at word precision).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slam_core.eval.cross_modal import list_cross_modal
from slam_core.eval.generate import prompt_seed, sample_ids
from slam_core.lm.interleave import InterleavingTokenizer

log = logging.getLogger(__name__)

METRICS = ("cm_generate_genppl", "cm_generate_auto_bleu")
SLAMKIT_DIFFERENCE = ("SlamKit's cm_generate saves the texts only; GenPPL/auto-BLEU of the continuation is this "
                      "project's addition")


def prompt_files(layout_dir: str | Path, n: int) -> list[tuple[str, Path, str]]:
    """(item id, `_mutual.wav` path, `_mutual.txt` text) of the first `n` items of a cross-modal layout, sorted."""
    if n < 1:
        raise ValueError(f"interleave.cm_generate_prompts: {n}; ask for at least one prompt")
    return [(item_id, Path(f"{base}_mutual.wav"), Path(f"{base}_mutual.txt").read_text().strip())
            for item_id, base in list_cross_modal(layout_dir)[:n]]


def prompt_ids(tok: InterleavingTokenizer, units: Sequence[int]) -> np.ndarray:
    """`[BOS, <speech>, u..., <text>]`: a speech prompt that asks for a text continuation."""
    v = tok.vocab
    return np.array([v.bos_id, v.speech_id] + tok.unit_ids(units) + [v.text_id], np.int64)


def continuation_text(tok: InterleavingTokenizer, new_ids: Sequence[int] | np.ndarray) -> str:
    """The text of sampled ids, up to the first EOS, without markers, BOS/PAD and units (SlamKit's decode_sample
    drops them all and decodes the rest)."""
    v = tok.vocab
    ids = np.asarray(new_ids, np.int64)
    stops = np.flatnonzero(ids == v.eos_id)
    ids = ids[: stops[0]] if stops.size else ids
    drop = {v.bos_id, v.pad_id, v.speech_id, v.text_id}
    keep = [int(t) for t in ids if t not in drop and not v.unit_offset <= t < v.speech_id]
    return tok.text_tokenizer.decode(keep) if keep else ""


def generate_text(model: torch.nn.Module, tok: InterleavingTokenizer, prompts: Sequence[dict[str, Any]],
                  temperature: float = 0.8, top_k: int = 25, max_new_tokens: int = 150, seed: int = 0,
                  batch_size: int = 8) -> list[dict[str, Any]]:
    """One sampled text continuation per prompt row ({"item_id", "prompt_units", ...}), unit tokens banned; each
    row draws from its own sampler seeded by (seed, item id), so a row does not depend on its batch. Returns the
    rows with "continuation" (text) and "new_tokens" (ids sampled before EOS)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    v = tok.vocab
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]["prompt_units"]), i))
    sampled: dict[int, np.ndarray] = {}
    t0 = time.perf_counter()
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        rows = sample_ids(model, [prompt_ids(tok, prompts[i]["prompt_units"]) for i in batch],
                          [prompt_seed(seed, str(prompts[i]["item_id"])) for i in batch], temperature, top_k,
                          max_new_tokens, 1.0, eos_id=v.eos_id, pad_id=v.pad_id,
                          banned=(v.unit_offset, v.speech_id))
        sampled.update(zip(batch, rows))
    out = []
    for i, row in enumerate(prompts):
        ids = sampled[i]
        stops = np.flatnonzero(ids == v.eos_id)
        out.append({**row, "prompt_units": [int(u) for u in row["prompt_units"]],
                    "continuation": continuation_text(tok, ids),
                    "new_tokens": int(stops[0]) if stops.size else len(ids)})
    log.info("cm_generate: %d text continuations in %.1f s", len(out), time.perf_counter() - t0)
    return out


def score_continuations(rows: Sequence[dict[str, Any]], ppl_lm: torch.nn.Module | None, ppl_tokenizer: Any,
                        batch_size: int = 8, prepend_bos: bool = False, auto_bleu_n: int = 2) -> dict[str, Any]:
    """GenPPL (None without a judge LM) and auto-BLEU of the continuations, as the speech GenPPL summarises its
    transcripts (`genppl.summarize_generation`); "rows" gain "nll" and "auto_bleu"."""
    from slam_core.eval.genppl import summarize_generation
    from slam_core.eval.text_metrics import auto_bleu, transcript_nll

    texts = [r["continuation"] for r in rows]
    if ppl_lm is not None:
        nlls = transcript_nll(ppl_lm, ppl_tokenizer, texts, batch_size=batch_size, prepend_bos=prepend_bos)
        result = summarize_generation(texts, nlls, auto_bleu_n)
    else:  # auto-BLEU needs no LM; an empty continuation is not a scoring failure here, so no n_empty
        nlls = [None] * len(texts)
        result = {**summarize_generation(texts, [0.0] * len(texts), auto_bleu_n), "genppl": None, "n": 0,
                  "note": "no judge LM: GenPPL not computed"}
    result["rows"] = [{**r, "nll": nll, "auto_bleu": auto_bleu(t, auto_bleu_n)} for r, t, nll in zip(rows, texts, nlls)]
    return result
