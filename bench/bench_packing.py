"""What SlamKit's step semantics cost: examples packed whole into token buffers, against filling rows.

An optimiser step is 128 examples (chunks of <= 1,024 tokens, documents cut only at multiples of the context),
packed first-fit decreasing into buffers of 8 x 1,024 tokens (`slam_core.lm.data`). The GPU runs whole buffers,
so real tokens/s = buffer tokens/s x fill; the old loader filled every row to the last token (fill 1.0) by
cutting documents at row ends. This bench measures, on documents whose lengths follow a stated distribution:
- the fill (real tokens / buffer tokens), hence the expected tokens/s ratio new / old on a GPU;
- buffers (micro-batches) per step and the mean example length (the paper's 1.4 B tokens over 17,625 steps of
  128 examples give ~621 tokens an example);
- CPU time to draw and pack one step, against the H200 step time of the `slam` preset (it must stay far below
  it: packing runs on a prefetch thread beside the GPU).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slam_core.lm.data import PackedLoader, sources_from_paths
from slam_core.schemas import UNITS

PAPER_TOKENS_PER_EXAMPLE = 1.4e9 / (17_625 * 128)
# slam preset on an H200 (bench/results/train-gpu.json, 2026-12-04): 184,759 tok/s at 131,072 tokens a step
H200_STEP_S = 131_072 / 184_759
# Document lengths in tokens: log-normal with its median chosen so that examples average about the paper's ~621
# tokens (measured: 624 with these numbers); an assumption standing in for the real mix, not measured on it.
LENGTHS = {"median_tokens": 600, "sigma": 0.9, "min_tokens": 50, "max_tokens": 4_000}


def _write_docs(path: Path, n_docs: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(LENGTHS["median_tokens"]), LENGTHS["sigma"], n_docs),
                      LENGTHS["min_tokens"], LENGTHS["max_tokens"]).astype(int) - 2
    rows = [{"segment_id": f"d{i:06d}", "dataset": "bench", "split": "train",
             "units": rng.integers(0, 500, n).tolist(), "durations": None, "n_frames": int(n),
             "audio_seconds": 0.04 * n} for i, n in enumerate(lengths)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=UNITS), path, row_group_size=1024)
    return int(lengths.sum() + 2 * n_docs)


def run(quick: bool = True) -> dict:
    n_docs, n_steps = (6_000, 30) if quick else (40_000, 200)
    context_len, rows, examples_per_step = 1024, 8, 128
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
        shard = Path(tmp) / "units" / "bench" / "train" / "units-00000.parquet"
        n_tokens = _write_docs(shard, n_docs, seed=0)
        t0 = time.perf_counter()
        loader = PackedLoader(sources_from_paths([shard]), context_len, rows, seed=0, store_dir=Path(tmp) / "store")
        index_s = time.perf_counter() - t0
        loader.next_step(examples_per_step)  # first step: permutation and page cache
        t0 = time.perf_counter()
        steps = [loader.next_step(examples_per_step) for _ in range(n_steps)]
        pack_s = (time.perf_counter() - t0) / n_steps
    real = sum(s.n_tokens for s in steps)
    buffers = sum(s.n_buffers for s in steps)
    fill = real / (buffers * rows * context_len)
    out = {"results_kind": "cpu", "documents": n_docs, "document_tokens": n_tokens, "lengths": LENGTHS,
           "context_len": context_len, "buffer_rows": rows, "examples_per_step": examples_per_step,
           "tokens_per_example": round(real / (n_steps * examples_per_step), 1),
           "paper_tokens_per_example": round(PAPER_TOKENS_PER_EXAMPLE, 1),
           "micro_batches_per_step": round(buffers / n_steps, 2), "fill": round(fill, 4),
           "expected_gpu_tokens_per_s_ratio_vs_row_filling": round(fill, 4),
           "index_build_s": round(index_s, 3), "pack_s_per_step": round(pack_s, 4),
           "pack_time_vs_h200_step": round(pack_s / H200_STEP_S, 4)}
    print(f"packing: {out['tokens_per_example']} tokens/example (paper ~{out['paper_tokens_per_example']}), "
          f"{out['micro_batches_per_step']} buffers/step, fill {fill:.3f} -> GPU tokens/s x{fill:.3f} vs filling rows; "
          f"packing {1e3 * pack_s:.1f} ms/step = {out['pack_time_vs_h200_step']:.3f} of an H200 step")
    return out
