"""Sampled speech continuations from a unit LM (SlamKit `metric=generate`, paper Table 6; docs/published-artifacts.md).

Prompts are the first `prompt_s` seconds of each pair's positive utterance, taken from the unit durations
(25 Hz frames: one duration unit = 0.04 s), encoded `[1, u+2, ...]` without EOS, then sampled in batches
(left padding, KV cache, one seeded sampler per prompt; HF `generate`'s sampling settings); each row stops at
`<S>` (id 1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slam_core.atomic import write_text_atomic
from slam_core.device import pick_device
from slam_core.eval.pairs import load_causal_lm, read_eval_pairs
from slam_core.lm.vocab import EOS_ID, PAD_ID, decode_ids, encode_units

log = logging.getLogger(__name__)

FRAME_S = 0.04  # 25 Hz units: one duration step = 640 samples at 16 kHz
EOS_CHECK_STEPS = 8  # sample_batch looks whether every row has ended (a GPU sync) once per this many steps


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


def prompt_seed(seed: int, prompt_id: str) -> int:
    """The sampler seed of one prompt, from (run seed, prompt id): a continuation depends on which prompt it is,
    never on its position in the list or on the other prompts sharing its batch."""
    digest = hashlib.sha256(f"{seed}|{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # torch seeds are int64


def sample_batch(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], seeds: Sequence[int], temperature: float, top_k: int,
    max_new_tokens: int, repetition_penalty: float, kv_cache: str = "dynamic",
) -> list[list[int]]:
    """Sampled continuations (unit ids) of several unit prompts at once, one seeded sampler per row (`sample_ids`
    on `[BOS, u+2, ...]`), each up to its EOS."""
    encoded = [encode_units(p, add_bos=True, add_eos=False) for p in prompts]
    rows = sample_ids(model, encoded, seeds, temperature, top_k, max_new_tokens, repetition_penalty, kv_cache)
    return [generated_units(row) for row in rows]


@torch.no_grad()
def sample_ids(
    model: torch.nn.Module, encoded: Sequence[np.ndarray], seeds: Sequence[int], temperature: float, top_k: int,
    max_new_tokens: int, repetition_penalty: float, kv_cache: str = "dynamic", eos_id: int = EOS_ID,
    pad_id: int = PAD_ID, banned: tuple[int, int] | None = None,
) -> list[np.ndarray]:
    """Sampled token ids after several encoded prompts at once, one seeded sampler per row; a row is PAD after
    its EOS. `banned`: an id range [lo, hi) never drawn (HF's bad_words_ids: logits set to -inf first).

    Prompts are left-padded and masked, positions count real tokens only, and the KV cache carries the batch
    from step to step; each row stops at its own EOS. HF `generate` draws every row from one global RNG, so a
    row's sample would depend on its batch: here row i draws from its own CPU `torch.Generator(seeds[i])`
    (CPU, so a seed gives the same draws on any device), which makes the result that of sampling the row alone
    up to float effects of batching. Sampling is HF's: repetition penalty over the prompt (BOS included) and
    the tokens so far, then temperature and top-k.

    kv_cache: "dynamic" (HF DynamicCache, grown by concatenation each step) or "static" (transformers
    StaticCache preallocated for prompt + `max_new_tokens` and a preallocated attention mask: no per-step
    allocation, the same tensor shapes every step; the faster choice on a GPU).
    """
    if len(encoded) != len(seeds):
        raise ValueError(f"{len(encoded)} prompts but {len(seeds)} seeds")
    if kv_cache not in ("dynamic", "static"):
        raise ValueError(f"kv_cache={kv_cache!r}: expected 'dynamic' or 'static'")
    if not encoded:
        return []
    device = next(model.parameters()).device
    n_rows, width = len(encoded), max(len(e) for e in encoded)
    # the static variant's mask covers the whole cache up front; slots not written yet stay 0 (masked)
    total = width + max_new_tokens if kv_cache == "static" else width
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n_rows, total), dtype=torch.long)
    vocab = model.get_output_embeddings().weight.shape[0]
    seen = torch.zeros((n_rows, vocab), dtype=torch.bool)  # tokens the repetition penalty applies to
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens):] = torch.as_tensor(tokens)
        mask[row, width - len(tokens):width] = 1
        seen[row, torch.as_tensor(tokens)] = True
    ids, mask, seen = ids.to(device), mask.to(device), seen.to(device)
    positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)  # left padding must not shift real tokens' positions
    # every row's uniform draws for all steps at once, on the device: a CPU generator fills a tensor serially, so
    # these are the draws one call per step would give, without 2 x rows small calls and a copy every step
    uniforms = torch.stack([torch.rand(max_new_tokens, dtype=torch.float64, generator=torch.Generator().manual_seed(int(s)))
                            for s in seeds]).to(device)
    new_ids = torch.full((n_rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
    cache = _static_cache(model, total) if kv_cache == "static" else None
    step_ids, step_positions = ids, positions
    for step in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
        if banned is not None:
            logits[:, banned[0]:banned[1]] = float("-inf")
        next_ids = _draw(penalise_repeats(logits, seen, repetition_penalty) / temperature, top_k, uniforms[:, step])
        next_ids = torch.where(finished, pad_id, next_ids)
        new_ids[:, step] = next_ids
        seen[torch.arange(n_rows, device=device), next_ids] = True
        finished |= next_ids == eos_id
        # the all-finished check waits for the GPU: every EOS_CHECK_STEPS steps only (finished rows just get PAD)
        if (step + 1) % EOS_CHECK_STEPS == 0 and bool(finished.all()):
            break
        step_ids, step_positions = next_ids[:, None], step_positions[:, -1:] + 1
        if kv_cache == "static":
            mask[:, width + step] = 1
        else:
            mask = torch.cat([mask, torch.ones((n_rows, 1), dtype=mask.dtype, device=device)], dim=1)
    return list(new_ids.cpu().numpy())


def _static_cache(model: torch.nn.Module, max_len: int):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=max_len)


def penalise_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF's repetition penalty: the logit of every token already seen is divided by `penalty` if positive,
    multiplied by it if negative (`seen`: a [rows, vocab] boolean mask)."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def _draw(logits: torch.Tensor, top_k: int, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row from softmax(top-k logits), by inverting the row's CDF at the row's uniform draw (float64,
    one per row, from its own generator; top_k=1 is greedy decoding)."""
    top_logits, top_ids = torch.topk(logits, k=min(top_k, logits.shape[-1]), dim=-1)
    cdf = torch.softmax(top_logits.double(), dim=-1).cumsum(-1)
    choice = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True).clamp(max=cdf.shape[-1] - 1)
    return top_ids.gather(-1, choice).squeeze(-1)


def generate_continuations(
    checkpoint_dir: str | Path, pairs_path: str | Path, n_prompts: int, prompt_s: float = 3.0,
    temperature: float = 0.8, top_k: int = 25, max_new_tokens: int = 150, repetition_penalty: float = 1.0,
    seed: int = 0, device: str = "auto", batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Continuations of the first `n_prompts` positive utterances of an EVAL_PAIRS_UNITS file.

    Each prompt is sampled with `prompt_seed(seed, pair_id)`, so a row does not depend on how many prompts are
    asked for or how they are batched. Returns [{"pair_id", "prompt_units", "generated_units"}].
    """
    rows, _ = read_eval_pairs(pairs_path)
    prompts = [{"pair_id": row["pair_id"],
                "prompt_units": prompt_units(row["positive_units"], row["positive_durations"], prompt_s)}
               for row in rows[:n_prompts]]
    return generate_from_prompts(checkpoint_dir, prompts, temperature, top_k, max_new_tokens, repetition_penalty,
                                 seed, device, batch_size)


def generate_from_prompts(
    checkpoint_dir: str | Path, prompts: Sequence[dict[str, Any]], temperature: float = 0.8, top_k: int = 25,
    max_new_tokens: int = 150, repetition_penalty: float = 1.0, seed: int = 0, device: str = "auto",
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Sample one continuation per prompt row ({"pair_id", "prompt_units", ...}), `batch_size` prompts at a time
    (grouped by length, so batches pad little); row order is kept and rows are batch-independent."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = load_causal_lm(checkpoint_dir, pick_device(device))
    # a preallocated cache pays off on a GPU (no per-step allocation); on a CPU the dynamic one attends to fewer slots
    kv_cache = "static" if next(model.parameters()).device.type == "cuda" else "dynamic"
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]["prompt_units"]), i))
    continuations: dict[int, list[int]] = {}
    t0 = time.perf_counter()
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        samples = sample_batch(model, [prompts[i]["prompt_units"] for i in batch],
                               [prompt_seed(seed, str(prompts[i]["pair_id"])) for i in batch],
                               temperature, top_k, max_new_tokens, repetition_penalty, kv_cache)
        continuations.update(zip(batch, samples))
    elapsed_s = time.perf_counter() - t0
    results = [{**row, "prompt_units": [int(u) for u in row["prompt_units"]], "generated_units": continuations[i]}
               for i, row in enumerate(prompts)]
    log.info("generated %d continuations in %.1f s (batch %d; new units %s)", len(results), elapsed_s, batch_size,
             [len(r["generated_units"]) for r in results])
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


def write_generations(rows: list[dict[str, Any]], out_path: str | Path) -> Path:
    """Write generation rows as indented JSON, atomically."""
    return write_text_atomic(out_path, json.dumps(rows, indent=1) + "\n")
