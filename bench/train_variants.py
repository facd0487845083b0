"""Training-throughput variants for bench/bench_train.py: one function per way of running the same model.

Every variant builds a fresh model of the same shape (random weights, seed 0), trains `warmup + timed`
optimiser steps of `micro x accum x context` tokens on the same packed bench shard, and reports tokens/s of
the timed steps (CUDA synchronised at the end of each step). Variants:
- `plain_loop`: the reference: unpacked rows, HF causal SDPA with no mask and no position ids, eager, bf16
  autocast, fused AdamW; what a minimal loop gets from the same model;
- `trainer`: this project's step (`slam_core.lm.step.train_step`) with a chosen attention implementation,
  compile on/off, liger on/off and micro-batch (or "auto": the trainer's probe);
- `dpo`: the DPO step (`slam_core.lm.dpo._dpo_step`) on synthetic preference pairs.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from bench.common import mirror
from slam_core.atomic import write_text_atomic
from slam_core.config import DpoConfig, TrainConfig
from slam_core.lm import tuning
from slam_core.lm.attention import needs_whole_rows, register_packed_attention
from slam_core.lm.data import PackedLoader, PrefetchingLoader, sources_from_paths
from slam_core.lm.distributed import DistEnv
from slam_core.lm.metrics import model_flops_per_token
from slam_core.lm.step import autocast_for, make_optimizer, train_step, weight_cast_scope
from slam_core.schemas import UNITS

SLAM_SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2)
TINY_SHAPE = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1)


def build_model(shape: dict, context_len: int, attn: str, device: torch.device) -> Qwen2ForCausalLM:
    register_packed_attention()
    cfg = Qwen2Config(vocab_size=502, tie_word_embeddings=True, rope_theta=10_000.0, use_cache=False,
                      max_position_embeddings=max(1024, context_len), **shape)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).to(device).train()  # fp32 master weights; bf16 via autocast on CUDA


def write_shard(path: Path, n_tokens: int, doc_len: tuple[int, int], seed: int = 0, learnable: bool = False) -> Path:
    """Documents of random units (throughput), or (learnable) repeated short motifs whose loss can fall."""
    rng = np.random.default_rng(seed)
    rows, total = [], 0
    while total < n_tokens:
        n = int(rng.integers(*doc_len))
        units = (np.resize(rng.integers(0, 60, rng.integers(2, 8)), n) if learnable else rng.integers(0, 500, n)).tolist()
        rows.append({"segment_id": f"d{len(rows)}", "dataset": "bench", "split": "train", "units": units,
                     "durations": [1] * len(units), "n_frames": len(units), "audio_seconds": 0.04 * len(units)})
        total += len(units) + 2
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=UNITS), path, row_group_size=1024)
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _timed(step, n_warmup: int, n_timed: int, tokens_per_step: int, device: torch.device) -> dict:
    """Times `step`; a step that returns an int returns its real (unpadded) tokens, else tokens_per_step counts."""
    ends, tokens = [], []
    for _ in range(n_warmup + n_timed):
        got = step()
        tokens.append(got if isinstance(got, int) else tokens_per_step)
        sync(device)
        ends.append(time.perf_counter())
    timed_s = ends[-1] - ends[n_warmup - 1]
    out = {"tokens_per_s": sum(tokens[n_warmup:]) / timed_s, "step_s": timed_s / n_timed}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def plain_loop(shape: dict, context_len: int, micro: int, accum: int, steps: tuple[int, int],
               device: torch.device, dtype: torch.dtype) -> dict:
    """The reference: unpacked rows of random tokens, no mask, no position ids (HF's is_causal SDPA path)."""
    model = build_model(shape, context_len, "sdpa", device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(2, 502, (micro, context_len), generator=gen).to(device) for _ in range(accum)]

    def step():
        for ids in rows:
            with autocast_for(device, dtype):
                logits = model(input_ids=ids, use_cache=False).logits
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, 502), ids[:, 1:].reshape(-1))
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss)

    result = _timed(step, *steps, micro * accum * context_len, device)
    flops = model_flops_per_token(model, context_len)
    del model, optimizer, rows
    release(device)
    return {**result, "micro_batch": micro, "flops_per_token": flops}


def trainer(shape: dict, context_len: int, micro: int | str, sequences_per_step: int, shard: Path,
            steps: tuple[int, int], device: torch.device, dtype: torch.dtype, attn: str, compile_layers: bool,
            liger: bool = False, cache_dir: Path | None = None) -> dict:
    """This project's training step, set up the way `slam_core.lm.train.pretrain` sets it up."""
    model = build_model(shape, context_len, attn, device)
    if liger:
        tuning.apply_liger(model)
    cfg = TrainConfig(micro_batch_size=8 if sequences_per_step % 8 == 0 else 1,
                      grad_accum=sequences_per_step // (8 if sequences_per_step % 8 == 0 else 1),
                      run_micro_batch=micro)
    t0 = time.perf_counter()
    choice: dict = {}  # auto on CUDA: the memory share, each probed size's peak, the choice and why
    run_micro = tuning.probe_micro_batch(model, cfg, context_len, attn, device, dtype, DistEnv(), cache_dir, choice)
    probe_s = time.perf_counter() - t0
    if device.type == "cuda":  # the run's peak from here on, not a probe's (an out-of-memory probe fills the GPU)
        torch.cuda.reset_peak_memory_stats(device)
    compile_s = 0.0
    if compile_layers:
        tuning.compile_decoder_layers(model)
        compile_s = tuning.warm_up(model, run_micro, context_len, attn, device, dtype)
    optimizer = make_optimizer(model, cfg, device, 1e-4)
    loader = PackedLoader(sources_from_paths([shard]), context_len, run_micro, seed=0,
                          whole_rows=needs_whole_rows(attn))
    if device.type == "cuda":
        loader = PrefetchingLoader(loader, depth=2, pin_memory=True, examples_per_step=sequences_per_step)
    micro_steps = []

    def one_step() -> int:  # real tokens of the step: padding in the buffers is not counted
        packed = train_step(model, model, model, optimizer, loader, sequences_per_step, 0.5, device, dtype, attn,
                            DistEnv())[2]
        micro_steps.append(len(packed.batches))
        return packed.n_tokens

    try:
        result = _timed(one_step, *steps, sequences_per_step * context_len, device)
    finally:
        if isinstance(loader, PrefetchingLoader):
            loader.close()
    flops = model_flops_per_token(model, context_len)
    del model, optimizer
    release(device)
    if choice:
        result["micro_batch_choice"] = choice
    return {**result, "attn_implementation": attn, "compile": compile_layers, "liger": liger, "micro_batch": run_micro,
            "micro_batches_per_step": round(sum(micro_steps) / len(micro_steps), 2), "compile_s": round(compile_s, 1), "probe_s": round(probe_s, 1),
            "flops_per_token": flops}


def dpo(shape: dict, steps: tuple[int, int], device: torch.device, dtype: torch.dtype, attn: str,
        compile_layers: bool, cfg: DpoConfig, n_pairs: int = 512) -> dict:
    """DPO steps of cfg.micro_batch_size x cfg.grad_accum pairs, cfg.run_micro_batch per forward (auto: probed),
    prompts of 50-300 and completions of 30-250 tokens (about SpokenSwag's lengths at 25 Hz); the reference
    log-probs are random (they only enter the loss)."""
    from slam_core.lm import dpo as dpo_lib

    model = build_model(shape, cfg.max_prompt_tokens + cfg.max_completion_tokens, attn, device)
    rng = np.random.default_rng(0)
    pairs = [dpo_lib.pair_tokens(rng.integers(0, 500, rng.integers(50, 300)), rng.integers(0, 500, rng.integers(30, 250)),
                                 rng.integers(0, 500, rng.integers(30, 250)), cfg.max_prompt_tokens,
                                 cfg.max_completion_tokens) for _ in range(n_pairs)]
    reference = -100.0 * torch.rand(n_pairs, 2)
    pairs_per_step = cfg.micro_batch_size * cfg.grad_accum
    width = -(-(cfg.max_prompt_tokens + cfg.max_completion_tokens) // dpo_lib.PAD_MULTIPLE) * dpo_lib.PAD_MULTIPLE
    micro = tuning.fit_micro_batch(model, cfg.run_micro_batch, cfg.micro_batch_size, pairs_per_step, 2, width, attn,
                                   device, dtype, DistEnv(), None)
    compile_s = 0.0
    if compile_layers:
        tuning.compile_decoder_layers(model, dynamic=True)
        compile_s = tuning.warm_up(model, 2 * micro, width, attn, device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=device.type == "cuda" or None)
    order = dpo_lib._PairOrder(n_pairs, 0)
    tokens = []

    def step():
        idx = [order.take(micro) for _ in range(pairs_per_step // micro)]
        tokens.append(dpo_lib._dpo_step(model, optimizer, pairs, reference, idx, cfg, device, dtype, attn)[3])

    ends = []
    for _ in range(sum(steps)):
        step()
        sync(device)
        ends.append(time.perf_counter())
    timed_s = ends[-1] - ends[steps[0] - 1]
    del model, optimizer
    release(device)
    return {"tokens_per_s": sum(tokens[steps[0]:]) / timed_s, "step_s": timed_s / steps[1],
            "pairs_per_step": pairs_per_step, "pairs_per_forward": micro, "attn_implementation": attn,
            "compile": compile_layers, "compile_s": round(compile_s, 1)}


def update_results(path: Path, updates: dict) -> None:
    """Merge `updates` into the results file (written atomically after every variant)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    mirror(path)
