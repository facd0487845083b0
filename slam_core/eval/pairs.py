"""Pairwise likelihood metrics (sBLIMP, sSC, tSC, SALMon and their synthetic stand-ins).

Scoring follows SlamKit (`unit_lm.py:log_likelihood`, `calc_nll` with `mean_nll: true`): each whole utterance
is `[1, u+2, ..., 1]`, the score is the mean log-probability of every target after BOS (the final EOS included),
padding is masked, and a pair counts 1 if the positive scores higher, 0.5 on an exact tie.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from slam_core.device import pick_device
from slam_core.errors import CheckpointNotFoundError  # noqa: F401 - raised by load_causal_lm, caught by callers
from slam_core.lm.vocab import encode_units
from slam_core.schemas import EVAL_PAIRS_UNITS

log = logging.getLogger(__name__)

PAIR_COLUMNS = tuple(EVAL_PAIRS_UNITS.names)


def load_causal_lm(name_or_dir: str | Path, device: torch.device, what: str = "speech LM checkpoint") -> torch.nn.Module:
    """`slam_core.lm.model.load_lm` (float32, one clear error) in eval mode on `device`."""
    from slam_core.lm.model import load_lm  # here: the LM module pulls in the typed config

    return load_lm(name_or_dir, what=what).to(device).eval()


@torch.no_grad()
def score_sequences(
    model: torch.nn.Module, token_seqs: Sequence[np.ndarray], batch_size: int, device: torch.device | str
) -> np.ndarray:
    """Mean log-prob per sequence of its targets `seq[1:]` given the prefix; results in input order.

    Sequences are sorted by length so each batch pads little (right padding, masked by length, so the pad value
    never matters); a causal model makes the result independent of batch composition up to float noise.
    """
    device = torch.device(device)
    lengths = np.array([len(s) for s in token_seqs], dtype=np.int64)
    if (lengths < 2).any():
        bad = int(np.flatnonzero(lengths < 2)[0])
        raise ValueError(f"sequence {bad} has {lengths[bad]} tokens; scoring needs BOS plus at least one target")
    scores = np.empty(len(token_seqs), dtype=np.float64)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        scores[idx] = _score_batch(model, [token_seqs[i] for i in idx], device)
    return scores


def _score_batch(model: torch.nn.Module, seqs: list[np.ndarray], device: torch.device) -> np.ndarray:
    max_len = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), max_len), dtype=torch.long)
    mask = torch.zeros((len(seqs), max_len), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        mask[row, : len(seq)] = 1
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    target_mask = mask[:, 1:].to(logprobs.dtype)
    mean_lp = (logprobs * target_mask).sum(1) / target_mask.sum(1)
    return mean_lp.double().cpu().numpy()


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion; `successes` may be fractional (half-ties: p̂ = the mean)."""
    if n <= 0:
        return (0.0, 1.0)
    p_hat = successes / n
    denom = 1.0 + z * z / n
    centre = (p_hat + z * z / (2 * n)) / denom
    half = z * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def pair_outcomes(pos_scores: np.ndarray, neg_scores: np.ndarray) -> np.ndarray:
    """1 where the positive wins, 0.5 on an exact tie, 0 otherwise."""
    pos, neg = np.asarray(pos_scores), np.asarray(neg_scores)
    return (pos > neg).astype(np.float64) + 0.5 * (pos == neg)


def read_eval_pairs(pairs_path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Rows of an EVAL_PAIRS_UNITS Parquet file; pairs with a missing/empty side are skipped with a reason."""
    path = Path(pairs_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: evaluation pairs file not found")
    table = pq.read_table(path)
    missing = [c for c in PAIR_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not an EVAL_PAIRS_UNITS file, missing columns {missing}")
    rows, skipped = [], []
    for row in table.select(list(PAIR_COLUMNS)).to_pylist():
        if not row["positive_units"] or not row["negative_units"]:
            skipped.append({"pair_id": str(row["pair_id"]), "reason": "empty_units", "path": str(path)})
            continue
        rows.append(row)
    if skipped:
        log.warning("%s: skipped %d pair(s) with empty units", path, len(skipped))
    return rows, skipped


def _metric_name(rows: list[dict[str, Any]], path: Path) -> str:
    names = {r["set"] for r in rows if r.get("set")}
    if len(names) == 1:
        return names.pop()
    if len(names) > 1:
        raise ValueError(f"{path}: mixes evaluation sets {sorted(names)}; write one file per set")
    return path.parent.name


def evaluate_pairs(
    checkpoint_dir: str | Path, pairs_path: str | Path, batch_size: int = 16, device: str = "auto"
) -> dict[str, Any]:
    """Pairwise accuracy of a checkpoint on an EVAL_PAIRS_UNITS file, with a 95 % Wilson interval.

    Returns {"metric", "accuracy", "n", "ci_low", "ci_high", "elapsed_s", "pairs_per_s", "skipped",
    "per_pair": [{"pair_id", "pos", "neg"}]}.
    """
    dev = pick_device(device)
    model = load_causal_lm(checkpoint_dir, dev)
    rows, skipped = read_eval_pairs(pairs_path)
    metric = _metric_name(rows, Path(pairs_path))
    if not rows:
        raise ValueError(f"{pairs_path}: no scorable pairs ({len(skipped)} skipped)")
    started = time.perf_counter()
    pos, neg = score_pairs(model, rows, batch_size, dev)
    elapsed_s = time.perf_counter() - started
    outcomes = pair_outcomes(pos, neg)
    n = len(rows)
    ci_low, ci_high = wilson_interval(float(outcomes.sum()), n)
    result = {
        "metric": metric, "accuracy": float(outcomes.mean()), "n": n, "ci_low": ci_low, "ci_high": ci_high,
        "elapsed_s": elapsed_s, "pairs_per_s": n / elapsed_s if elapsed_s > 0 else float("inf"), "skipped": skipped,
        "per_pair": [{"pair_id": r["pair_id"], "pos": float(p), "neg": float(q)} for r, p, q in zip(rows, pos, neg)],
    }
    log.info("%s: accuracy %.4f on %d pairs [%.4f, %.4f] (%.1f pairs/s)", metric, result["accuracy"], n,
             ci_low, ci_high, result["pairs_per_s"])
    return result


def score_pairs(
    model: torch.nn.Module, rows: Sequence[dict[str, Any]], batch_size: int, device: torch.device | str
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the positive and negative utterance of each pair (both sides batched together)."""
    seqs = [encode_units(r["positive_units"]) for r in rows] + [encode_units(r["negative_units"]) for r in rows]
    scores = score_sequences(model, seqs, batch_size, device)
    return scores[: len(rows)], scores[len(rows):]


def measure_pairs_per_s(
    model: torch.nn.Module, rows: Sequence[dict[str, Any]], batch_size: int, device: torch.device | str,
    n_repeats: int = 3,
) -> dict[str, float]:
    """Benchmark helper: time `score_pairs` (one untimed warm-up, then the best of `n_repeats`)."""
    score_pairs(model, rows[: max(1, batch_size)], batch_size, device)
    timings_s = []
    for _ in range(n_repeats):
        started = time.perf_counter()
        score_pairs(model, rows, batch_size, device)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        timings_s.append(time.perf_counter() - started)
    best_s = min(timings_s)
    return {"n_pairs": len(rows), "best_s": best_s, "median_s": float(np.median(timings_s)),
            "pairs_per_s": len(rows) / best_s if best_s > 0 else float("inf")}
