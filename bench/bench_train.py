"""Pre-training throughput (tokens/s, MFU): our trainer step vs HF `Trainer`, same model, same process.

Ours: `slam_core.lm.train._train_step` on PackedLoader rows (packed, per-document position ids), bf16
autocast, fused AdamW, flash-attn when importable else SDPA (optionally torch.compile on CUDA).
Baseline: HF `Trainer` + the same model config + SDPA + `DataCollatorWithFlattening` (HF's packing
collator), bf16, HF defaults otherwise. Both see documents of the same length distribution and about the
same tokens per optimiser step; tokens/s counts the tokens actually trained on.

CUDA: the exact Slam shape (Qwen2.5-0.5B dims, vocabulary 502, random weights, context 1024, 8 x 16
sequences per step). CPU: a tiny shape for a few steps, to prove the path works (MFU is None on CPU).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from slam_core.config import TrainConfig
from slam_core.device import pick_attn_implementation
from slam_core.lm.data import PackedLoader, PrefetchingLoader, sources_from_paths
from slam_core.lm.distributed import DistEnv
from slam_core.lm.metrics import device_peak_flops, mfu, model_flops_per_token
from slam_core.lm.attention import register_packed_attention
from slam_core.lm.step import make_optimizer, train_step
from slam_core.lm.vocab import encode_units
from slam_core.schemas import UNITS

SLAM_SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2)
TINY_SHAPE = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1)


def _setup(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"shape": SLAM_SHAPE, "context_len": 1024, "micro_batch": 8, "grad_accum": 16, "warmup_steps": 3,
                "timed_steps": 8, "doc_len": (50, 1000)}
    return {"shape": TINY_SHAPE, "context_len": 128, "micro_batch": 2, "grad_accum": 2, "warmup_steps": 2,
            "timed_steps": 10, "doc_len": (10, 120)}


def _model(setup: dict, attn: str, device: torch.device) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(vocab_size=502, tie_word_embeddings=True, rope_theta=10_000.0, use_cache=False,
                      max_position_embeddings=max(1024, setup["context_len"]), **setup["shape"])
    register_packed_attention()
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).to(device).train()  # fp32 master weights; bf16 via autocast


def _documents(setup: dict, n_tokens: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < n_tokens:
        units = rng.integers(0, 500, int(rng.integers(*setup["doc_len"])))
        docs.append(units)
        total += len(units) + 2
    return docs


def _write_shard(docs: list[np.ndarray], path: Path) -> Path:
    rows = [{"segment_id": f"d{i}", "dataset": "bench", "split": "train", "units": d.tolist(),
             "durations": [1] * len(d), "n_frames": len(d), "audio_seconds": 0.04 * len(d)} for i, d in enumerate(docs)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=UNITS), path, row_group_size=1024)
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _tokens_per_s(step_ends: list[float], step_tokens: list[int], warmup_steps: int) -> float:
    """Tokens of the timed steps over their wall time (the steps after `warmup_steps`)."""
    timed_s = step_ends[-1] - step_ends[warmup_steps - 1]
    return sum(step_tokens[warmup_steps:]) / timed_s


def run_ours(setup: dict, shard: Path, device: torch.device, compile_model: bool = False) -> dict:
    attn = pick_attn_implementation("auto", device)
    model = _model(setup, attn, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = TrainConfig(micro_batch_size=setup["micro_batch"], grad_accum=setup["grad_accum"])
    optimizer = make_optimizer(model, cfg, device, cfg.lr)
    loader = PackedLoader(sources_from_paths([shard]), setup["context_len"], setup["micro_batch"], seed=0)
    if device.type == "cuda":
        loader = PrefetchingLoader(loader, depth=2 * setup["grad_accum"], pin_memory=True)
    forward_model = torch.compile(model) if compile_model else model
    tokens = setup["micro_batch"] * setup["grad_accum"] * setup["context_len"]
    ends = []
    try:
        for _ in range(setup["warmup_steps"] + setup["timed_steps"]):
            train_step(forward_model, model, model, optimizer, loader, setup["grad_accum"], cfg.grad_clip, device,
                       dtype, attn, DistEnv())
            _sync(device)
            ends.append(time.perf_counter())
    finally:
        if isinstance(loader, PrefetchingLoader):
            loader.close()
    tok_s = _tokens_per_s(ends, [tokens] * len(ends), setup["warmup_steps"])
    return {"tokens_per_s": tok_s, "attn_implementation": attn, "compile": compile_model,
            "step_s": statistics.median(np.diff(ends[setup["warmup_steps"] - 1:]).tolist()),
            "flops_per_token": model_flops_per_token(model, setup["context_len"])}


def run_hf_trainer(setup: dict, docs: list[np.ndarray], device: torch.device, out_dir: Path) -> dict:
    from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments

    model = _model(setup, "sdpa", device)
    mean_len = float(np.mean([len(d) + 2 for d in docs]))
    per_device = max(1, round(setup["micro_batch"] * setup["context_len"] / mean_len))  # about as many tokens
    dataset = [{"input_ids": encode_units(d).tolist()} for d in docs]
    flatten = DataCollatorWithFlattening()
    seen = [0]

    def collate(features: list[dict]) -> dict:
        seen[0] += sum(len(f["input_ids"]) for f in features)
        return flatten(features)

    ends, step_tokens = [], []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            ends.append(time.perf_counter())
            step_tokens.append(seen[0] - sum(step_tokens))

    n_steps = setup["warmup_steps"] + setup["timed_steps"]
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=per_device, gradient_accumulation_steps=setup["grad_accum"],
        max_steps=n_steps, learning_rate=1e-3, lr_scheduler_type="cosine", max_grad_norm=0.5,
        bf16=device.type == "cuda", use_cpu=device.type != "cuda", save_strategy="no", report_to=[],
        logging_strategy="no", remove_unused_columns=False, seed=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[Timer()])
    trainer.train()
    return {"tokens_per_s": _tokens_per_s(ends, step_tokens, setup["warmup_steps"]), "per_device_batch": per_device,
            "optim": str(args.optim), "tokens_per_step": statistics.mean(step_tokens[setup["warmup_steps"]:])}


def run(quick: bool = True) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":  # the tiny shape gains nothing from threads, and spinning OpenMP threads on a
        torch.set_num_threads(1)  # shared host slows both trainers many-fold (and noisily)
    setup = _setup(device)
    steps = setup["warmup_steps"] + setup["timed_steps"]
    docs = _documents(setup, n_tokens=int(1.2 * steps * setup["micro_batch"] * setup["grad_accum"] * setup["context_len"]))
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        shard = _write_shard(docs, Path(tmp) / "units" / "bench" / "train" / "units-00000.parquet")
        ours = run_ours(setup, shard, device)
        compiled = run_ours(setup, shard, device, compile_model=True) if device.type == "cuda" else None
        baseline = run_hf_trainer(setup, docs, device, Path(tmp) / "hf")
    peak = device_peak_flops(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    flops_tok = ours["flops_per_token"]
    best = max([ours] + ([compiled] if compiled else []), key=lambda r: r["tokens_per_s"])
    for result in filter(None, (ours, compiled, baseline)):
        result["mfu"] = mfu(result["tokens_per_s"], flops_tok, peak)
    ratio = best["tokens_per_s"] / baseline["tokens_per_s"]
    fmt = lambda m: "n/a" if m is None else f"{100 * m:.1f}%"  # noqa: E731
    print(f"train: ours {ours['tokens_per_s']:,.0f} tok/s (MFU {fmt(ours['mfu'])})"
          + (f", compiled {compiled['tokens_per_s']:,.0f} tok/s (MFU {fmt(compiled['mfu'])})" if compiled else "")
          + f" vs HF Trainer {baseline['tokens_per_s']:,.0f} tok/s (MFU {fmt(baseline['mfu'])}): ratio {ratio:.2f}")
    return {"shape": {**setup["shape"], "vocab_size": 502, "context_len": setup["context_len"],
                      "micro_batch": setup["micro_batch"], "grad_accum": setup["grad_accum"],
                      "timed_steps": setup["timed_steps"]},
            "flops_per_token": flops_tok, "peak_flops": peak,
            "tokens_per_s": best["tokens_per_s"], "mfu": best["mfu"], "ours": ours, "ours_compiled": compiled,
            "baseline_hf_trainer": baseline, "ratio": ratio}
