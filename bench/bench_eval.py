"""Pair scoring speed (pairs/s): length-sorted batches vs one pair at a time (same process).

CPU: the smoke-size model. GPU (when visible): the real Slam shape (Qwen2.5-0.5B dims, vocab 502, random weights).
"""

from __future__ import annotations

import numpy as np
import torch

from bench.common import speech_lm
from slam_core.eval.pairs import measure_pairs_per_s


def _rows(n: int, seed: int = 0, lengths: tuple[int, int] = (100, 300)) -> list[dict]:
    rng = np.random.default_rng(seed)  # sSC-like lengths: 5–15 s at ~20 units/s
    return [{"pair_id": str(i), "positive_units": rng.integers(0, 500, rng.integers(*lengths)).tolist(),
             "negative_units": rng.integers(0, 500, rng.integers(*lengths)).tolist()} for i in range(n)]


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


def run_gpu(budget_s: float = 15.0, save=lambda r: None, smoke: bool = False) -> dict:
    """The Slam shape (bf16) on the GPU within `budget_s`: 256 pairs batched (32), saved, then 1,024, then as many
    pairs one at a time as the rest of the budget allows (at least 16; ~11 pairs/s on an H200). `smoke`: the same
    code on the CPU with the small model and a few pairs."""
    import time

    t0 = time.perf_counter()
    device = torch.device("cpu" if smoke else "cuda")
    model = speech_lm(device)
    rows = _rows(16, lengths=(20, 60)) if smoke else _rows(1024)
    results: dict = {"batch_size": 8 if smoke else 32}
    for n in (len(rows) // 4, len(rows)):  # a first figure early, then the full set
        batched = measure_pairs_per_s(model, rows[:n], results["batch_size"], device, n_repeats=1)
        results.update({"pairs_per_s": batched["pairs_per_s"], "n_pairs": n})
        save(results)
    min_single = 4 if smoke else 16
    n_single = max(min_single, min(128, int((budget_s - (time.perf_counter() - t0)) * 0.6 * 11)))
    single = measure_pairs_per_s(model, rows[:n_single], 1, device, n_repeats=1)
    results.update({"baseline_pairs_per_s": single["pairs_per_s"], "baseline_pairs": n_single,
                    "ratio": results["pairs_per_s"] / single["pairs_per_s"], "wall_s": round(time.perf_counter() - t0, 1)})
    print(f"eval pairs: {results['pairs_per_s']:,.1f} pairs/s batched vs {single['pairs_per_s']:,.1f} one at a "
          f"time (ratio {results['ratio']:.1f})", flush=True)
    save(results)
    return results
