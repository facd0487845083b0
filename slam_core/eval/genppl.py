"""GenPPL and auto-BLEU of sampled continuations (SlamKit `metric=asr_perplexity`,
`slamkit/metric/generative_metric.py`).

Pipeline: vocode prompt + continuation units (SlamKit's remove_prompt=False) -> 16 kHz WAVs -> Whisper transcript
-> per-sample mean NLL under a text LM -> GenPPL = exp(mean over samples of the per-sample mean NLL).
auto-BLEU is the mean over every transcript, an empty one counting 0, as in SlamKit; empty transcripts are
excluded from GenPPL and counted (SlamKit's 0/0 makes GenPPL NaN; see `text_metrics.GENPPL_EMPTY_DIFFERENCE`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slam_core.atomic import write_text_atomic
from slam_core.eval.asr import transcribe
from slam_core.eval.text_metrics import GENPPL_EMPTY_DIFFERENCE, auto_bleu, genppl, mean_auto_bleu, transcript_nll
from slam_core.eval.vocoder import Vocoder, vocode, write_wav_16k

log = logging.getLogger(__name__)

RESULT_FILE = "genppl.json"


def wav_name(index: int, row: dict[str, Any]) -> str:
    """File name of one generation's audio: index first (unique), then a filesystem-safe pair id."""
    pair_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(row.get("pair_id", "")))[:60]
    return f"gen_{index:04d}{'_' + pair_id if pair_id else ''}.wav"


def vocode_generations(
    generations: Sequence[dict[str, Any]], vocoder: Vocoder, out_dir: str | Path, include_prompt: bool = True,
) -> tuple[list[Path], list[np.ndarray]]:
    """Vocode each row's (prompt +) continuation units, write `out_dir/gen_XXXX_<pair>.wav`; return paths, waves."""
    out_dir = Path(out_dir)
    paths, waves = [], []
    for i, row in enumerate(generations):
        units = (list(row["prompt_units"]) if include_prompt else []) + list(row["generated_units"])
        wave = vocode(vocoder, units)
        paths.append(write_wav_16k(out_dir / wav_name(i, row), wave))
        waves.append(wave)
    return paths, waves


def summarize_generation(
    transcripts: Sequence[str], per_sample_nll: Sequence[float | None], auto_bleu_n: int = 2,
) -> dict[str, Any]:
    """GenPPL over the scorable transcripts and mean auto-BLEU over all of them (empty ones count 0).

    Returns {"genppl" (None if nothing scorable), "auto_bleu" (None for no transcript), "n" (samples scored by
    GenPPL), "n_samples", "n_empty", "note", "slamkit_difference" (what differs from SlamKit on these
    transcripts, "" when nothing)}; never NaN.
    """
    if len(transcripts) != len(per_sample_nll):
        raise ValueError(f"{len(transcripts)} transcripts but {len(per_sample_nll)} NLLs")
    ppl = genppl(per_sample_nll)
    return {"genppl": ppl["genppl"], "auto_bleu": mean_auto_bleu(transcripts, auto_bleu_n), "n": ppl["n"],
            "n_samples": len(transcripts), "n_empty": ppl["n_empty"], "note": ppl["note"],
            "slamkit_difference": GENPPL_EMPTY_DIFFERENCE if ppl["n_empty"] else ""}


def evaluate_generation(
    generations: Sequence[dict[str, Any]], vocoder: Vocoder, asr: Any, ppl_lm: torch.nn.Module, ppl_tokenizer: Any,
    out_dir: str | Path, batch_size: int = 8, auto_bleu_n: int = 2, asr_max_tokens: int | None = None,
    asr_language: str | None = None, prepend_bos: bool = False,
) -> dict[str, Any]:
    """GenPPL + auto-BLEU of generation rows ({"pair_id", "prompt_units", "generated_units"}).

    Writes one WAV per row and `genppl.json` (the returned dict) to `out_dir`. The returned "rows" are the input
    rows plus "wav_path", "transcript", "nll" and "auto_bleu" (usable by report.write_report).
    """
    paths, waves = vocode_generations(generations, vocoder, out_dir, include_prompt=True)
    transcripts = transcribe(asr, waves, language=asr_language, batch_size=batch_size, max_tokens=asr_max_tokens)
    # transcripts go to the LM as Whisper gives them (usually with a leading space), as in SlamKit
    nlls = transcript_nll(ppl_lm, ppl_tokenizer, transcripts, batch_size=batch_size, prepend_bos=prepend_bos)
    result = summarize_generation(transcripts, nlls, auto_bleu_n)
    result["rows"] = [
        {**row, "wav_path": str(path), "transcript": text, "nll": nll,
         "auto_bleu": auto_bleu(text, auto_bleu_n)}
        for row, path, text, nll in zip(generations, paths, transcripts, nlls)
    ]
    write_text_atomic(Path(out_dir) / RESULT_FILE, json.dumps(result, indent=1) + "\n")
    log.info("GenPPL %s, auto-BLEU %s over %d samples (%d empty)", result["genppl"], result["auto_bleu"],
             result["n"], result["n_empty"])
    return result
