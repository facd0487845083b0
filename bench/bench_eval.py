"""Pair scoring speed (pairs/s): length-sorted batches vs one pair at a time (same process).

CPU: the smoke-size model. GPU (when visible): the real Slam shape (Qwen2.5-0.5B dims, vocab 502, random weights).
"""

from __future__ import annotations

import numpy as np
import torch

from bench.common import speech_lm
from slam_core.eval.pairs import measure_pairs_per_s


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)  # sSC-like lengths: 5–15 s at ~20 units/s
    return [{"pair_id": str(i), "positive_units": rng.integers(0, 500, rng.integers(100, 300)).tolist(),
             "negative_units": rng.integers(0, 500, rng.integers(100, 300)).tolist()} for i in range(n)]


def run(quick: bool = True) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = speech_lm(device)
    rows = _rows(64 if quick and device.type == "cpu" else 1024)
    batched = measure_pairs_per_s(model, rows, 32, device, n_repeats=2)
    single = measure_pairs_per_s(model, rows[: max(8, len(rows) // 8)], 1, device, n_repeats=1)
    ratio = batched["pairs_per_s"] / single["pairs_per_s"]
    print(f"eval pairs: {batched['pairs_per_s']:,.1f} pairs/s batched vs {single['pairs_per_s']:,.1f} one at a time "
          f"(ratio {ratio:.2f})")
    return {"pairs_per_s": batched["pairs_per_s"], "baseline_pairs_per_s": single["pairs_per_s"], "ratio": ratio,
            "n_pairs": len(rows)}


def run_gpu(budget_s: float = 15.0, save=lambda r: None) -> dict:
    """The Slam shape (bf16) on the GPU within `budget_s`: 1,024 pairs batched (32), then as many pairs one at a
    time as the rest of the budget allows (at least 16; ~11 pairs/s on an H200)."""
    import time

    t0 = time.perf_counter()
    device = torch.device("cuda")
    model = speech_lm(device)
    rows = _rows(1024)
    batched = measure_pairs_per_s(model, rows, 32, device, n_repeats=1)
    results = {"pairs_per_s": batched["pairs_per_s"], "n_pairs": len(rows), "batch_size": 32}
    save(results)
    n_single = max(16, min(128, int((budget_s - (time.perf_counter() - t0)) * 0.6 * 11)))
    single = measure_pairs_per_s(model, rows[:n_single], 1, device, n_repeats=1)
    results.update({"baseline_pairs_per_s": single["pairs_per_s"], "baseline_pairs": n_single,
                    "ratio": batched["pairs_per_s"] / single["pairs_per_s"]})
    print(f"eval pairs on GPU: {batched['pairs_per_s']:,.1f} pairs/s batched vs {single['pairs_per_s']:,.1f} one at a "
          f"time (ratio {results['ratio']:.1f})", flush=True)
    save(results)
    return results
