"""Sampled speech continuations from a unit LM (SlamKit `metric=generate`, slamkit-facts.md §4 and item 8).

Prompts are the first `prompt_s` seconds of each pair's positive utterance, taken from the unit durations
(25 Hz frames: one duration unit = 0.04 s), encoded `[1, u+2, ...]` without EOS, then sampled with HF
`generate(do_sample=True)`; generation stops at `<S>` (id 1).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slam_core.atomic import write_text_atomic
from slam_core.device import pick_device
from slam_core.eval.pairs import load_causal_lm, read_eval_pairs
from slam_core.lm.vocab import BOS_ID, EOS_ID, PAD_ID, decode_ids, encode_units

log = logging.getLogger(__name__)

FRAME_S = 0.04  # 25 Hz units: one duration step = 640 samples at 16 kHz


def prompt_units(units: Sequence[int], durations: Sequence[int], prompt_s: float) -> list[int]:
    """Units whose start time lies before `prompt_s`, i.e. what tokenising the audio cut at `prompt_s` gives.

    A unit straddling the cut is kept (cutting the waveform keeps its first frames); at least one unit is kept.
    """
    if len(units) != len(durations):
        raise ValueError(f"{len(units)} units but {len(durations)} durations")
    starts_frames = np.concatenate([[0], np.cumsum(np.asarray(durations, dtype=np.int64))[:-1]])
    cut_frames = round(prompt_s / FRAME_S)
    n_keep = max(1, int(np.count_nonzero(starts_frames < cut_frames)))
    return [int(u) for u in units[:n_keep]]


def generated_units(new_ids: Sequence[int] | np.ndarray) -> list[int]:
    """Unit ids of freshly generated token ids, up to (not including) the first EOS."""
    new_ids = np.asarray(new_ids, dtype=np.int64)
    stops = np.flatnonzero(new_ids == EOS_ID)
    if stops.size:
        new_ids = new_ids[: stops[0]]
    return [int(u) for u in decode_ids(new_ids)]


def sample_continuation(
    model: torch.nn.Module, prompt: Sequence[int], seed: int, temperature: float, top_k: int,
    max_new_tokens: int, repetition_penalty: float,
) -> list[int]:
    """One seeded sampled continuation (unit ids) of a prompt given as unit ids."""
    device = next(model.parameters()).device
    ids = torch.as_tensor(encode_units(prompt, add_bos=True, add_eos=False), device=device)[None]
    torch.manual_seed(seed)  # seeds CPU and every CUDA device: same seed -> same sample
    # top_p=1.0 overrides any nucleus setting inherited from the base model's generation_config.json
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=temperature,
        top_k=top_k, top_p=1.0, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty, use_cache=True,
        eos_token_id=EOS_ID, pad_token_id=PAD_ID, bos_token_id=BOS_ID,
    )
    return generated_units(out[0, ids.shape[1]:].cpu().numpy())


def generate_continuations(
    checkpoint_dir: str | Path, pairs_path: str | Path, n_prompts: int, prompt_s: float = 3.0,
    temperature: float = 0.8, top_k: int = 25, max_new_tokens: int = 150, repetition_penalty: float = 1.0,
    seed: int = 0, device: str = "auto",
) -> list[dict[str, Any]]:
    """Continuations of the first `n_prompts` positive utterances of an EVAL_PAIRS_UNITS file.

    Prompt i is sampled with seed `seed + i`, so a row does not depend on how many prompts are asked for.
    Returns [{"pair_id", "prompt_units", "generated_units"}].
    """
    rows, _ = read_eval_pairs(pairs_path)
    prompts = [{"pair_id": row["pair_id"],
                "prompt_units": prompt_units(row["positive_units"], row["positive_durations"], prompt_s)}
               for row in rows[:n_prompts]]
    return generate_from_prompts(checkpoint_dir, prompts, temperature, top_k, max_new_tokens, repetition_penalty,
                                 seed, device)


def generate_from_prompts(
    checkpoint_dir: str | Path, prompts: Sequence[dict[str, Any]], temperature: float = 0.8, top_k: int = 25,
    max_new_tokens: int = 150, repetition_penalty: float = 1.0, seed: int = 0, device: str = "auto",
) -> list[dict[str, Any]]:
    """Sample one continuation per prompt row ({"pair_id", "prompt_units", ...}); prompt i uses seed `seed + i`."""
    dev = pick_device(device)
    model = load_causal_lm(checkpoint_dir, dev)
    results = []
    for i, row in enumerate(prompts):
        cont = sample_continuation(model, row["prompt_units"], seed + i, temperature, top_k, max_new_tokens,
                                   repetition_penalty)
        results.append({**row, "prompt_units": [int(u) for u in row["prompt_units"]], "generated_units": cont})
    log.info("generated %d continuations (%s new units)", len(results), [len(r["generated_units"]) for r in results])
    return results


# ---- prompts from an audio directory (SlamKit: first prompt_length s, or the word end closest to it) ----------


def read_alignment(audio_path: str | Path) -> list[tuple[str, float, float]] | None:
    """Word alignment beside an audio file (`<file>.json` or `<file stem>.json`), or None.

    Accepted: a list, or a dict with "aligned_text", of [word, start_s, end_s] or {"word", "start_time",
    "end_time"} (SlamKit's meta JSON and sTinyStories' column). A malformed file raises ValueError naming it.
    """
    audio_path = Path(audio_path)
    for candidate in (audio_path.with_suffix(audio_path.suffix + ".json"), audio_path.with_suffix(".json")):
        if candidate.is_file():
            break
    else:
        return None
    try:
        data = json.loads(candidate.read_text())
        items = data["aligned_text"] if isinstance(data, dict) else data
        words = [(str(w["word"]), float(w["start_time"]), float(w["end_time"])) if isinstance(w, dict)
                 else (str(w[0]), float(w[1]), float(w[2])) for w in items]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as err:
        raise ValueError(f"{candidate}: not a word alignment ({type(err).__name__}: {err}); expected "
                         "[[word, start_s, end_s], ...] or {'aligned_text': [...]}") from None
    return words


def word_boundary_cut_s(words: Sequence[tuple[str, float, float]], prompt_s: float) -> float:
    """The end time of the word whose end lies closest to `prompt_s` (the earlier one on a tie)."""
    if not words:
        return prompt_s
    return min((end for _, _, end in words), key=lambda end: (abs(end - prompt_s), end))


def prompts_from_units(
    rows: Sequence[dict[str, Any]], prompt_s: float, alignments: dict[str, list[tuple[str, float, float]] | None],
) -> list[dict[str, Any]]:
    """Prompt rows from UNITS rows ({"segment_id", "units", "durations"}): cut at `prompt_s`, or at the word end
    closest to it when `alignments[segment_id]` is given. Each row records its cut ("cut_s", "cut")."""
    prompts = []
    for row in rows:
        words = alignments.get(row["segment_id"])
        cut_s = word_boundary_cut_s(words, prompt_s) if words else prompt_s
        prompts.append({"pair_id": row["segment_id"], "cut_s": round(cut_s, 3),
                        "cut": "word_boundary" if words else "fixed",
                        "prompt_units": prompt_units(row["units"], row["durations"], cut_s)})
    return prompts


def write_generations(rows: list[dict[str, Any]], out_path: str | Path) -> Path:
    """Write generation rows as indented JSON, atomically."""
    return write_text_atomic(out_path, json.dumps(rows, indent=1) + "\n")
