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


def run_gpu(budget_s: float = 30.0, save=lambda r: None) -> dict:
    """The same comparison on the GPU (Slam shape, 1,024 pairs batched, 128 one at a time)."""
    results = run(quick=False)
    save(results)
    return results
