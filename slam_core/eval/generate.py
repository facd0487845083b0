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
    dev = pick_device(device)
    model = load_causal_lm(checkpoint_dir, dev)
    rows, _ = read_eval_pairs(pairs_path)
    results = []
    for i, row in enumerate(rows[:n_prompts]):
        prompt = prompt_units(row["positive_units"], row["positive_durations"], prompt_s)
        cont = sample_continuation(model, prompt, seed + i, temperature, top_k, max_new_tokens, repetition_penalty)
        results.append({"pair_id": row["pair_id"], "prompt_units": prompt, "generated_units": cont})
    log.info("generated %d continuations (%s new units)", len(results), [len(r["generated_units"]) for r in results])
    return results


def write_generations(rows: list[dict[str, Any]], out_path: str | Path) -> Path:
    """Write generation rows as indented JSON, atomically."""
    return write_text_atomic(out_path, json.dumps(rows, indent=1) + "\n")
