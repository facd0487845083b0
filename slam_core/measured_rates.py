"""Measured rates of the preprocessing stages, each with its device, date, setup and source, for `slam plan`.

A committed bench result (`bench/results/units-gpu.json`, `synth-gpu.json`, written by `python -m bench.run_all
--gpu`) is used when it has the figure; otherwise the table below, which cites the measurement it copies.
Nothing here is an assumption: a stage without a measurement says so.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


@dataclass(frozen=True)
class MeasuredRate:
    x_realtime: float
    """Seconds of audio processed per wall-clock second on one device."""
    device: str
    date: str
    setup: str
    source: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_ISSUE_25 = "issue 25 table: `python -m bench.run_all --gpu` at ed744c6 (units and synth parts)"
# HuBERT-base 25 Hz shape (random weights, layer 11), 918 s of 1-20 s segments, batches of 64, fp16.
UNITS_TABLE = {
    ("invariant", "float16"): MeasuredRate(
        747.0, "NVIDIA H200", "2026-12-04", "HuBERT-base 25 Hz shape, fp16, batches of 64, invariant batching with "
        "the per-item kernels of ed744c6 (conv stack and attention per segment, Triton matmul)", _ISSUE_25),
    ("padded", "float16"): MeasuredRate(
        2_784.0, "NVIDIA H200", "2026-12-04", "HuBERT-base 25 Hz shape, fp16, masked padded batches of 64 (cuBLAS)",
        _ISSUE_25),
}
# Kokoro-82M shape (random weights), 128 utterances of 40-200 phonemes, no G2P.
KOKORO_TABLE = MeasuredRate(429.0, "NVIDIA H200", "2026-12-04", "Kokoro-82M shape, one process, fp32, batches of 64 "
                            "(G2P not included)", _ISSUE_25)


# Word alignments from synthesis timings (sTinyStories' aligned_text read and matched to the transcript, no model)
# and token docs (tokenising units and words, no model): CPU work on one thread of the shared 2-core development
# machine (load average ~2), median of 3 timings of a smoke_interleaved data root (1.11 h, 12,396 words, 240
# utterances in 4 shards; docs: interleaved + speech-only, 139,524 tokens, the tiny 1,024-token BPE).
SYNTH_ALIGN_CPU = MeasuredRate(
    39_944.0, "2-core CPU", "2026-12-04", "synth_alignments of 4 espeak sTinyStories-layout shards, 1 thread "
    "(3 timings: 31,293-41,069x)", "issue 27: slam_core.align.sources.synth_alignments timed on smoke_interleaved")
TOKEN_DOCS_CPU = {"tokens_per_s": 753_594.0, "device": "2-core CPU", "date": "2026-12-04",
                  "setup": "interleaved + speech-only docs of 4 shards, the tiny 1,024-token BPE, 1 thread (3 timings: "
                           "699,089-763,381 tokens/s)",
                  "source": "issue 27: slam_core.lm.interleave_stage.write_docs timed on smoke_interleaved"}
# Whisper word timestamps per model name: none measured yet (a figure goes here with its device and date).
WHISPER_ALIGN_TABLE: dict[str, MeasuredRate] = {}


def whisper_align_rate(model: str) -> MeasuredRate | None:
    """The measured rate of Whisper word alignment with this model on one GPU; None: unmeasured."""
    return WHISPER_ALIGN_TABLE.get(model)


def _bench(name: str) -> dict[str, Any] | None:
    path = BENCH_RESULTS / f"{name}-gpu.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _from_bench(result: dict[str, Any], value: Any, setup: str, name: str) -> MeasuredRate | None:
    if not isinstance(value, (int, float)) or value <= 0:
        return None
    machine = result.get("machine", {})
    return MeasuredRate(float(value), str(machine.get("device", "unknown GPU")), str(machine.get("date", "?"))[:10],
                        setup, f"bench/results/{name}-gpu.json")


def units_rate(batching: str, dtype: str) -> tuple[MeasuredRate | None, str]:
    """The measured units rate for this batching mode and encoder dtype ("float32", "float16", ...), and a note
    on how far the measurement is from it (another dtype or kernels)."""
    result = _bench("units")
    r = (result or {}).get("hubert_base_25hz", {})
    if r:
        bench_dtype = r.get("dtype")
        prefixes = {("invariant", bench_dtype): "", ("padded", bench_dtype): "padded_",
                    ("invariant", "float16"): "fp16_", ("padded", "float16"): "fp16_padded_"}
        prefix = prefixes.get((batching, dtype))
        if prefix is not None:
            setup = f"HuBERT-base 25 Hz shape, {dtype}, batches of {r.get('batch_size')}, {batching} batching"
            rate = _from_bench(result, r.get(f"{prefix}x_realtime"), setup, "units")
            if rate is not None:
                return rate, "measured in this configuration"
    rate = UNITS_TABLE.get((batching, dtype))
    if rate is not None:
        return rate, "measured in this configuration" + (" (with the previous per-item kernels)" if batching == "invariant" else "")
    fallback = UNITS_TABLE.get((batching, "float16"))
    if fallback is None:
        return None, f"no GPU measurement of {batching} batching"
    return fallback, f"measured in float16; {dtype} is unmeasured on a GPU"


def kokoro_rate() -> MeasuredRate:
    """The measured Kokoro synthesis rate on one GPU: the bench's aggregate (several worker processes, or one),
    else the table's one-process figure."""
    result = _bench("synth")
    k = (result or {}).get("kokoro", {})
    workers = k.get("aggregate_workers")
    rate = _from_bench(result or {}, k.get("aggregate_x_realtime"),
                       f"Kokoro-82M shape, aggregate of {workers} process(es), {k.get('dtype')}", "synth") if k else None
    return rate or KOKORO_TABLE
