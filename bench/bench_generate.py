"""Sampled continuations (prompts/s): batched generation vs one prompt at a time, same model, same process.

Batched: `slam_core.eval.generate.sample_batch`, prompts grouped by length into batches of `batch_size` (left
padding, KV cache, a seeded sampler per prompt) as `generate_from_prompts` does. Baselines, one prompt at a
time: the same loop with batch size 1, and HF `generate(do_sample=True)` (what generation used before).

CPU (`run`): the smoke-size model on a few short prompts, dynamic and static KV cache. GPU (`run_gpu`, within
60 s): the real Slam shape (Qwen2.5-0.5B dims, vocabulary 502, random weights, bf16), 3-s prompts (about 60
units) and 150 new tokens, as the paper presets.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from bench.common import best_of, speech_lm, sync
from slam_core.eval.generate import generated_units, prompt_seed, sample_batch
from slam_core.lm.vocab import EOS_ID, PAD_ID, encode_units

SAMPLING = dict(temperature=0.8, top_k=25, repetition_penalty=1.1)


def _prompts(n: int, lengths: tuple[int, int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 500, rng.integers(*lengths)).tolist() for _ in range(n)]


def _batched(model: torch.nn.Module, prompts: list[list[int]], batch_size: int, max_new_tokens: int,
             kv_cache: str = "dynamic") -> list[list[int]]:
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = []
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        out += sample_batch(model, [prompts[i] for i in batch], [prompt_seed(0, str(i)) for i in batch],
                            max_new_tokens=max_new_tokens, kv_cache=kv_cache, **SAMPLING)
    return out


@torch.no_grad()
def _hf_one_at_a_time(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    device, out = next(model.parameters()).device, []
    for i, prompt in enumerate(prompts):
        ids = torch.as_tensor(encode_units(prompt, add_bos=True, add_eos=False), device=device)[None]
        torch.manual_seed(i)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=1.0,
                             max_new_tokens=max_new_tokens, eos_token_id=EOS_ID, pad_token_id=PAD_ID, **SAMPLING)
        out.append(generated_units(gen[0, ids.shape[1]:].cpu().numpy()))
    return out


def _rate(fn: Callable[[], list[list[int]]], n_prompts: int, repeats: int) -> dict[str, float]:
    """Prompts/s and new tokens/s of the best of `repeats` timed calls (after a warm-up call)."""
    new_tokens = sum(map(len, fn()))  # seeded: every call generates the same rows
    elapsed_s = best_of(fn, repeats)
    return {"prompts_per_s": n_prompts / elapsed_s, "new_tokens_per_s": new_tokens / elapsed_s, "seconds": elapsed_s}


def _timed_once(fn: Callable[[], list[list[int]]], n_prompts: int) -> dict[str, float]:
    """Prompts/s and new tokens/s of one timed call (the caller warms up on a smaller call)."""
    sync()
    t0 = time.perf_counter()
    new_tokens = sum(map(len, fn()))
    sync()
    elapsed_s = time.perf_counter() - t0
    return {"prompts_per_s": n_prompts / elapsed_s, "new_tokens_per_s": new_tokens / elapsed_s, "seconds": elapsed_s}


def run(quick: bool = True) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = speech_lm(device)
    if device.type == "cuda":
        n, lengths, max_new, batch_size, n_single = 256, (50, 75), 150, 64, 16
    else:
        n, lengths, max_new, batch_size, n_single = (16 if quick else 64), (40, 80), 40, 16, 4
    prompts = _prompts(n, lengths)
    repeats = 2 if device.type == "cuda" else 3  # best of: this CPU is shared, single timings are noisy
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # a tiny model on a busy CPU: OpenMP spinning, not the code, would be timed
    try:
        batched = _rate(lambda: _batched(model, prompts, batch_size, max_new), n, repeats)
        static = _rate(lambda: _batched(model, prompts, batch_size, max_new, "static"), n, repeats)
        single = _rate(lambda: _batched(model, prompts[:n_single], 1, max_new), n_single, repeats)
        hf_single = _rate(lambda: _hf_one_at_a_time(model, prompts[:n_single], max_new), n_single, repeats)
    finally:
        torch.set_num_threads(threads)
    ratio = batched["prompts_per_s"] / hf_single["prompts_per_s"]
    print(f"generation: {batched['prompts_per_s']:,.2f} prompts/s batched ({batch_size}; static cache "
          f"{static['prompts_per_s']:,.2f}) vs "
          f"{single['prompts_per_s']:,.2f} one at a time, {hf_single['prompts_per_s']:,.2f} with HF generate one at "
          f"a time (ratio {ratio:.2f})")
    return {"prompts_per_s": batched["prompts_per_s"], "new_tokens_per_s": batched["new_tokens_per_s"],
            "baseline_prompts_per_s": hf_single["prompts_per_s"], "ratio": ratio,
            "one_at_a_time_prompts_per_s": single["prompts_per_s"],
            "ratio_vs_one_at_a_time": batched["prompts_per_s"] / single["prompts_per_s"],
            "static_cache_prompts_per_s": static["prompts_per_s"],
            "n_prompts": n, "batch_size": batch_size, "max_new_tokens": max_new, "prompt_units": list(lengths),
            "torch_threads": 1 if device.type == "cpu" else threads}


def run_gpu(budget_s: float = 25.0, save: Callable[[dict], object] = lambda r: None, smoke: bool = False) -> dict:
    """The Slam shape (Qwen2.5-0.5B dims, vocab 502, bf16), 3-s prompts, 150 new tokens: the batched sampler
    (static KV cache; the dynamic one if the static fails or time is left) next to HF `generate` one prompt at a
    time, within `budget_s`. `smoke`: the same code on the CPU with the small model and a few short prompts."""
    t0 = time.perf_counter()
    model = speech_lm(torch.device("cpu" if smoke else "cuda"))
    n, lengths, max_new, batch_size, n_hf = (8, (10, 20), 6, 4, 2) if smoke else (128, (50, 75), 150, 64, 3)
    prompts = _prompts(n, lengths)
    results: dict = {"n_prompts": n, "batch_size": batch_size, "max_new_tokens": max_new, "prompt_units": list(lengths),
                     "hf_generate_prompts": n_hf, "model": "Qwen2.5-0.5B dims, vocab 502, random weights, bf16"}
    left = lambda: budget_s - (time.perf_counter() - t0)  # noqa: E731
    kv_cache = "static"
    save({**results, "phase": "warm-up"})  # a part killed later still shows where its time went
    try:
        _batched(model, prompts[:batch_size], batch_size, 8, kv_cache)  # warm-up: kernels, allocator, cache class
    except Exception as err:  # noqa: BLE001 - e.g. another transformers' StaticCache API: measure the dynamic one
        results["static_cache_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        kv_cache = "dynamic"
        _batched(model, prompts[:batch_size], batch_size, 8, kv_cache)
    # one batch first (a figure early), then every prompt when the budget allows
    batched = _timed_once(lambda: _batched(model, prompts[:batch_size], batch_size, max_new, kv_cache), batch_size)
    results.update({"prompts_per_s": batched["prompts_per_s"], "new_tokens_per_s": batched["new_tokens_per_s"],
                    "kv_cache": kv_cache, "batched_seconds": batched["seconds"], "timed_prompts": batch_size,
                    "phase": "one batch timed"})
    save(results)
    if left() > 1.5 * batched["seconds"] * (n / batch_size):
        batched = _timed_once(lambda: _batched(model, prompts, batch_size, max_new, kv_cache), n)
        results.update({"prompts_per_s": batched["prompts_per_s"], "new_tokens_per_s": batched["new_tokens_per_s"],
                        "batched_seconds": batched["seconds"], "timed_prompts": n, "phase": "all prompts timed"})
        save(results)
    _hf_one_at_a_time(model, prompts[:1], 4)  # warm-up
    hf_s = 0.0
    for k in range(n_hf):  # one prompt at a time, each saved: a part cut off keeps a baseline
        hf = _timed_once(lambda k=k: _hf_one_at_a_time(model, prompts[k:k + 1], max_new), 1)
        hf_s += hf["seconds"]
        results.update({"baseline_prompts_per_s": (k + 1) / hf_s, "hf_generate_prompts": k + 1,
                        "ratio": batched["prompts_per_s"] * hf_s / (k + 1),
                        "baseline": "HF generate(do_sample=True), one prompt at a time, dynamic cache",
                        "phase": "baseline timed"})
        save(results)
        if left() < 1.5 * hf["seconds"] + 2:
            break
    hf = {"prompts_per_s": results["baseline_prompts_per_s"]}
    print(f"generation on GPU: {batched['prompts_per_s']:,.1f} prompts/s batched ({batch_size}, {kv_cache} cache) vs "
          f"{hf['prompts_per_s']:,.2f} with HF generate one at a time (ratio {results['ratio']:.1f})", flush=True)
    save(results)
    # the sampler's per-step cost is mostly launches, nearly the same for more rows: a bigger batch, if time is left
    if left() > 2.5 * batched["seconds"] * (n / results["timed_prompts"]) and not smoke:
        big = _timed_once(lambda: _batched(model, prompts, n, max_new, kv_cache), n)
        results.update({"batch_of_all_prompts_per_s": big["prompts_per_s"], "ratio_batch_of_all": big["prompts_per_s"] /
                        results["baseline_prompts_per_s"]})
        print(f"  one batch of {n}: {big['prompts_per_s']:,.1f} prompts/s", flush=True)
        save(results)
    if kv_cache == "static" and left() > 1.5 * batched["seconds"]:
        dynamic = _timed_once(lambda: _batched(model, prompts, batch_size, max_new, "dynamic"), n)
        results["dynamic_cache_prompts_per_s"] = dynamic["prompts_per_s"]
        print(f"  dynamic cache: {dynamic['prompts_per_s']:,.1f} prompts/s", flush=True)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    save(results)
    return results
