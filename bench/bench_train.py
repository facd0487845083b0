"""Pre-training throughput (tokens/s, MFU) of this project's trainer against a plain loop in the same process.

CPU (`make bench`): a tiny shape for a few steps (proves the paths run; MFU is None on CPU): the plain loop,
the old attention path (HF SDPA deriving a dense mask from position_ids), the new one (packed kernel, one host
sync per step), HF `Trainer` + `DataCollatorWithFlattening` and a DPO step; plus the numerics check: the smoke shape
trained 200 steps on a fixed seed through the old and the new attention path, loss curves compared.

CUDA (`python -m bench.run_all --gpu`): the exact Slam shape (Qwen2.5-0.5B dims, vocabulary 502, random
weights, context 1024, 128 sequences per step) in three time-boxed parts, each writing
bench/results/train-gpu.json after every variant:
- `train`: the configuration the `slam` preset runs (packed kernel, regional compile, automatic micro-batch with
  memory headroom): its tokens/s and MFU are the headline figures, recorded with the micro-batch it chose and
  why; then the plain-loop reference (unpacked causal SDPA, no masks), the packed kernel eager at micro-batches
  32/16, eager SDPA (the old path) and micro-batch 8;
- `train_dpo`: DPO tokens/s with the `slam` preset's DPO batch, eager, then compiled;
- `train_kernels`: FlexAttention compiled, and liger-kernel's fused RMSNorm/SwiGLU/RoPE eager and compiled.
"""

from __future__ import annotations

import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import train_variants as tv
from bench.common import RESULTS_DIR, machine
from slam_core.config import DpoConfig, ModelConfig, TrainConfig
from slam_core.device import pick_attn_implementation
from slam_core.lm import tuning
from slam_core.lm.metrics import mfu, peak_flops_for_name

CPU = {"shape": tv.TINY_SHAPE, "context_len": 128, "micro": 2, "accum": 2, "steps": (2, 10), "doc_len": (10, 120)}
GPU = {"shape": tv.SLAM_SHAPE, "context_len": 1024, "micro": 8, "accum": 16, "steps": (2, 4), "doc_len": (50, 1000)}
NUMERICS_STEPS = 200


def _fmt(result: dict) -> str:
    util = result.get("mfu")
    return (f"{result['tokens_per_s']:,.0f} tok/s" + (f" (MFU {100 * util:.1f}%)" if util else "")
            + (f", compile {result['compile_s']} s" if result.get("compile_s") else ""))


# ---------------------------------------------------------------- CPU -----------------------------------------
def run(quick: bool = True) -> dict:
    """The CPU bench, also on a CUDA host (there `python -m bench.run_all --gpu` runs the GPU parts)."""
    device = torch.device("cpu")
    torch.set_num_threads(1)  # the tiny shape gains nothing from threads; spinning OpenMP threads slows a shared host
    s, dtype = CPU, torch.float32
    seqs = s["micro"] * s["accum"]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        shard = tv.write_shard(Path(tmp) / "units" / "bench" / "train" / "u.parquet",
                               int(1.2 * sum(s["steps"]) * seqs * s["context_len"]), s["doc_len"])
        ref = tv.plain_loop(s["shape"], s["context_len"], s["micro"], s["accum"], s["steps"], device, dtype)
        old = tv.trainer(s["shape"], s["context_len"], s["micro"], seqs, shard, s["steps"], device, dtype, "sdpa", False)
        new = tv.trainer(s["shape"], s["context_len"], s["micro"], seqs, shard, s["steps"], device, dtype,
                         pick_attn_implementation("auto", device), False)
        hf = _hf_trainer(s, shard, device, Path(tmp) / "hf")
        dpo = tv.dpo(s["shape"], s["steps"], device, dtype, pick_attn_implementation("auto", device), False,
                     DpoConfig(micro_batch_size=2, grad_accum=2, max_prompt_tokens=64, max_completion_tokens=64), 64)
        numerics = numerics_check(Path(tmp) / "numerics", NUMERICS_STEPS)
    print(f"train (cpu, tiny shape): plain loop {_fmt(ref)}; old path {_fmt(old)}; new path {_fmt(new)}; "
          f"HF Trainer {_fmt(hf)}; DPO {_fmt(dpo)}")
    print(f"numerics ({numerics['steps']} smoke steps): max |loss diff| {numerics['max_abs_loss_diff']:.2e}, "
          f"final {numerics['final_loss_old']:.4f} vs {numerics['final_loss_new']:.4f}")
    return {"results_kind": "cpu", "shape": {**s["shape"], "vocab_size": 502, "context_len": s["context_len"], "micro_batch": s["micro"],
                      "grad_accum": s["accum"], "timed_steps": s["steps"][1]},
            "tokens_per_s": new["tokens_per_s"], "mfu": None, "plain_loop": ref, "old_path_sdpa": old,
            "new_path": new, "baseline_hf_trainer": hf, "ratio_new_vs_plain_loop": new["tokens_per_s"] / ref["tokens_per_s"],
            "ratio_new_vs_hf_trainer": new["tokens_per_s"] / hf["tokens_per_s"], "dpo": dpo,
            "dpo_tokens_per_s": dpo["tokens_per_s"], "numerics": numerics}


def _hf_trainer(setup: dict, shard: Path, device: torch.device, out_dir: Path) -> dict:
    """HF `Trainer` + SDPA + `DataCollatorWithFlattening` on the same documents, about as many tokens per step."""
    import pyarrow.parquet as pq
    from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments

    from slam_core.lm.vocab import encode_units

    docs = [np.asarray(u) for u in pq.read_table(shard, columns=["units"]).column("units").to_pylist()]
    model = tv.build_model(setup["shape"], setup["context_len"], "sdpa", device)
    mean_len = float(np.mean([len(d) + 2 for d in docs]))
    per_device = max(1, round(setup["micro"] * setup["context_len"] / mean_len))
    dataset = [{"input_ids": encode_units(d).tolist()} for d in docs]
    flatten, seen, ends, step_tokens = DataCollatorWithFlattening(), [0], [], []

    def collate(features: list[dict]) -> dict:
        seen[0] += sum(len(f["input_ids"]) for f in features)
        return flatten(features)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            tv.sync(device)
            ends.append(time.perf_counter())
            step_tokens.append(seen[0] - sum(step_tokens))

    warmup, timed = setup["steps"]
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=per_device, gradient_accumulation_steps=setup["accum"],
        max_steps=warmup + timed, learning_rate=1e-3, lr_scheduler_type="cosine", max_grad_norm=0.5,
        bf16=device.type == "cuda", use_cpu=device.type != "cuda", save_strategy="no", report_to=[],
        logging_strategy="no", remove_unused_columns=False, seed=0, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[Timer()]).train()
    return {"tokens_per_s": sum(step_tokens[warmup:]) / (ends[-1] - ends[warmup - 1]), "per_device_batch": per_device,
            "tokens_per_step": statistics.mean(step_tokens[warmup:])}


def numerics_check(root: Path, steps: int) -> dict:
    """The smoke preset's model and batch, trained `steps` steps on a fixed seed through the old attention path
    (HF SDPA, mask from position_ids) and the new one (packed kernel): per-step loss differences."""
    from slam_core.lm.model import init_speech_lm, resolve_base
    from slam_core.lm.train import pretrain
    from slam_core.presets import smoke

    preset = smoke()
    model_cfg: ModelConfig = preset.model
    shard = tv.write_shard(root / "units" / "smoke" / "train" / "u.parquet",
                           int(1.1 * steps * preset.train.sequences_per_step * model_cfg.context_len), (40, 700), seed=1,
                           learnable=True)
    init = init_speech_lm(model_cfg, resolve_base(model_cfg, root), root / "init", seed=0)["path"]
    curves = {}
    for attn in ("sdpa", "auto"):
        cfg = TrainConfig(**{**preset.train.model_dump(), "budget_s": 1e9, "max_steps": steps, "log_every_steps": 1,
                             "checkpoint_every_s": 1e9, "val_fraction": 0.0})
        t0 = time.perf_counter()
        pretrain(Path(init), [shard], model_cfg.model_copy(update={"attn_implementation": attn}), cfg,
                 root / f"run-{attn}", seed=0, device="cpu", tensorboard=False)
        rows = list(csv.DictReader((root / f"run-{attn}" / "metrics.csv").open()))
        curves[attn] = ([float(r["loss"]) for r in rows if r["loss"]], time.perf_counter() - t0)
    old, new = curves["sdpa"][0], curves["auto"][0]
    diffs = np.abs(np.array(old) - np.array(new))
    return {"steps": len(old), "attn_old": "sdpa", "attn_new": pick_attn_implementation("auto", torch.device("cpu")),
            "max_abs_loss_diff": float(diffs.max()), "mean_abs_loss_diff": float(diffs.mean()),
            "final_loss_old": old[-1], "final_loss_new": new[-1], "first_loss": old[0],
            "seconds_old": round(curves["sdpa"][1], 1), "seconds_new": round(curves["auto"][1], 1),
            "within_noise": bool(diffs.max() < 1e-3)}


# ---------------------------------------------------------------- GPU -----------------------------------------
# SLAM_BENCH_DRY_RUN=1 runs the GPU parts on the CPU with the tiny shape (a rehearsal of the bench code itself,
# so that device time is not spent finding its bugs); results go to a separate file.
DRY_RUN = os.environ.get("SLAM_BENCH_DRY_RUN") == "1"
GPU_RESULTS = RESULTS_DIR / ("train-gpu-dryrun.json" if DRY_RUN else "train-gpu.json")
if DRY_RUN:
    GPU = {**CPU, "micro": 2, "accum": 8, "steps": (1, 2)}


def _gpu_context() -> tuple[torch.device, torch.dtype, float | None, Path]:
    if DRY_RUN:
        torch.set_num_threads(1)
        return torch.device("cpu"), torch.float32, None, Path(tempfile.mkdtemp(prefix="bench-train-dry-"))
    device = torch.device("cuda")
    torch._dynamo.config.recompile_limit = 64  # variants share the layer code object: never fall back to eager
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-gpu-"))
    tv.update_results(GPU_RESULTS, {"machine": machine()})
    return device, torch.bfloat16, peak_flops_for_name(torch.cuda.get_device_name(device)), tmp


def _record(name: str, result: dict, peak: float | None, flops: float | None = None) -> dict:
    result["mfu"] = mfu(result["tokens_per_s"], flops or result.get("flops_per_token", 0), peak) if (
        flops or result.get("flops_per_token")) else None
    tv.update_results(GPU_RESULTS, {"variants": {name: result}})
    print(f"  {name}: {_fmt(result)}", flush=True)
    return result


def _variant(name: str, deadline: float, min_s: float, fn, peak: float | None, flops: float | None = None):
    """Run one variant unless fewer than `min_s` seconds are left; an error is recorded, not raised."""
    left = deadline - time.monotonic()
    if left < min_s:
        tv.update_results(GPU_RESULTS, {"variants": {name: {"skipped": f"{left:.0f} s left of the part's budget"}}})
        print(f"  {name}: skipped ({left:.0f} s left)", flush=True)
        return None
    print(f"  {name}: running ({left:.0f} s left)", flush=True)
    try:
        return _record(name, fn(), peak, flops)
    except Exception as err:  # noqa: BLE001 — one failing variant must not lose the others
        tv.update_results(GPU_RESULTS, {"variants": {name: {"error": f"{type(err).__name__}: {err}"[:500]}}})
        print(f"  {name}: failed: {type(err).__name__}: {err}", flush=True)
        tv.release(torch.device("cpu" if DRY_RUN else "cuda"))
        return None


def _gpu_train_setup():
    """What the training parts share: device, dtype, peak FLOP/s, a scratch folder, sequences per step, a unit
    shard long enough for every variant, and the attention kernel the preset's `auto` picks."""
    device, dtype, peak, tmp = _gpu_context()
    g = GPU
    seqs = g["micro"] * g["accum"]
    shard = tv.write_shard(tmp / "units" / "bench" / "train" / "u.parquet",
                           int(1.3 * sum(g["steps"]) * seqs * g["context_len"]), g["doc_len"])
    return device, dtype, peak, tmp, seqs, shard, pick_attn_implementation("auto", device)


def run_gpu_train(budget_s: float, save=None) -> None:
    """Part `train`, most important first: the slam preset's configuration (packed kernel, compiled, automatic
    micro-batch with memory headroom: its tokens/s and MFU are the headline, with the micro-batch it chose and
    why), the plain-loop reference (the ratio), then the packed kernel eager at micro-batches 32/16, the old path
    and micro-batch 8. (`save` is unused: the training parts merge their variants into one file, train-gpu.json.)"""
    deadline = time.monotonic() + budget_s
    device, dtype, peak, tmp, seqs, shard, kernel = _gpu_train_setup()
    g = GPU
    args = (g["shape"], g["context_len"])
    # the preset's compile (13.3 s on an H200) and probe are inside its minimum
    preset = _variant("slam_preset", deadline, 35, lambda: tv.trainer(
        *args, "auto", seqs, shard, g["steps"], device, dtype, kernel, True, cache_dir=tmp), peak)
    ref = _variant("plain_loop_reference", deadline, 15, lambda: tv.plain_loop(
        *args, g["micro"], g["accum"], g["steps"], device, dtype), peak)
    if preset is not None:
        flops = preset["flops_per_token"]
        tv.update_results(GPU_RESULTS, {
            "slam_preset_config": {"attn_implementation": kernel, "compile": True, "run_micro_batch": preset["micro_batch"],
                                   "micro_batch_choice": preset.get("micro_batch_choice")},
            "tokens_per_s": preset["tokens_per_s"], "mfu": preset["mfu"], "flops_per_token": flops, "peak_flops": peak,
            "peak_gib_at_choice": preset.get("peak_gib"),
            "ratio_vs_plain_loop": preset["tokens_per_s"] / ref["tokens_per_s"] if ref else None})
    for micro in (32, 16):
        if seqs % micro == 0:
            _variant(f"{kernel}_eager_micro{micro}", deadline, 12, lambda m=micro: tv.trainer(
                *args, m, seqs, shard, g["steps"], device, dtype, kernel, False), peak)
    _variant("eager_sdpa_old_path", deadline, 15, lambda: tv.trainer(
        *args, 8, seqs, shard, g["steps"], device, dtype, "sdpa", False), peak)
    _variant(f"{kernel}_eager_micro8", deadline, 12, lambda: tv.trainer(
        *args, 8, seqs, shard, g["steps"], device, dtype, kernel, False), peak)


def run_gpu_dpo(budget_s: float, save=None) -> None:
    """Part `train_dpo`: the slam preset's DPO batch eager (a figure within ~15 s), then compiled (as it runs by
    default) with the rest of the budget, its compile time included; a compiled variant still compiling when the
    part's time is up is recorded as started and not finished."""
    deadline = time.monotonic() + budget_s
    from slam_core.presets import slam

    device, dtype, peak, _ = _gpu_context()
    cfg: DpoConfig = slam().dpo
    if DRY_RUN:
        cfg = cfg.model_copy(update={"micro_batch_size": 2, "grad_accum": 2})
    kernel = pick_attn_implementation("auto", device)
    best = 0.0
    for name, compiled in (("dpo_eager", False), ("dpo_compiled", True)):
        if compiled:  # a part killed while compiling still shows that it got this far
            tv.update_results(GPU_RESULTS, {"variants": {name: {"started": round(deadline - time.monotonic()),
                                                                "note": "s left when it started; not finished"}}})
        result = _variant(name, deadline, 20, lambda c=compiled: tv.dpo(GPU["shape"], GPU["steps"], device, dtype,
                                                                        kernel, c, cfg), None)
        if result is not None and result["tokens_per_s"] > best:  # DPO runs compiled by default; the faster one counts
            best = result["tokens_per_s"]
            tv.update_results(GPU_RESULTS, {"dpo_tokens_per_s": best, "dpo_config": {"compile": compiled,
                                                                                     "attn_implementation": kernel}})


def run_gpu_kernels(budget_s: float, save=None) -> None:
    """Part `train_kernels`: liger-kernel eager, FlexAttention compiled, liger compiled (liger patches modules
    globally: it runs in its own process). The dry run only patches a model with liger (its Triton kernels run
    on CUDA only)."""
    deadline = time.monotonic() + budget_s
    device, dtype, peak, tmp, seqs, shard, kernel = _gpu_train_setup()
    g = GPU
    args = (g["shape"], g["context_len"], 8 if seqs % 8 == 0 else g["micro"], seqs, shard, g["steps"], device, dtype)
    if DRY_RUN:
        def patched() -> dict:
            model = tv.build_model(g["shape"], g["context_len"], kernel, device)
            tuning.apply_liger(model)
            return {"dry_run": "liger-kernel imported and patched the model; its Triton kernels run on CUDA only"}

        try:
            tv.update_results(GPU_RESULTS, {"variants": {f"{kernel}_liger_eager_micro8": patched()}})
        except Exception as err:  # noqa: BLE001 - recorded like a variant's error
            tv.update_results(GPU_RESULTS, {"variants": {f"{kernel}_liger_eager_micro8": {
                "error": f"{type(err).__name__}: {err}"[:500]}}})
    else:
        _variant(f"{kernel}_liger_eager_micro8", deadline, 12, lambda: tv.trainer(*args, kernel, False, liger=True),
                 peak)
    if DRY_RUN:
        tv.update_results(GPU_RESULTS, {"variants": {"packed_flex_compiled_micro8": {
            "dry_run": "not run: FlexAttention has no backward pass on CPU; CUDA only"}}})
    else:
        _variant("packed_flex_compiled_micro8", deadline, 20, lambda: tv.trainer(*args, "packed_flex", True), peak)
    if not DRY_RUN:
        _variant(f"{kernel}_liger_compiled_micro8", deadline, 20,
                 lambda: tv.trainer(*args, kernel, True, liger=True), peak)


GPU_PARTS = {"train": run_gpu_train, "train_dpo": run_gpu_dpo, "train_kernels": run_gpu_kernels}
