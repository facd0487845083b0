"""`slam plan`: the whole run before any of it happens: datasets, resolved config, the steps and tokens the
budget buys on a device, disk and memory, and an ETA per stage. Does no work and writes nothing: the catalog is
opened read-only (and only when it exists), no directory is created.

Throughput is FLOPs-based: tokens/s = MFU x peak bf16 FLOP/s x GPUs / FLOPs per token (6N + 12·L·H·Q·T, the
count `slam_core.lm.metrics` uses for MFU: 2.414 GFLOP per token for the Slam shape). The MFU is an assumption,
printed with the result. Other rates are either measured on this project (named with where and when) or
marked as assumptions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from slam_core.config import SlamConfig
from slam_core.data_mix import (
    FLAC_BYTES_PER_S, SPOKENSWAG_PAIRS, pending_downloads, planned_sets, tokens_per_hour,
)
from slam_core.fingerprint import code_version
from slam_core.inputs import missing_inputs
from slam_core.lm.metrics import BF16_PEAK_FLOPS, flops_per_token_for, peak_flops_for_name
from slam_core.measured_rates import MeasuredRate, kokoro_rate, units_rate
from slam_core.plan_interleave import alignment_cost, interleave_stages

ASSUMED_MFU = 0.40
ASSUMED_DOWNLOAD_BYTES_PER_S = 50e6
# GPU rates of synthesis and units: measured, with device and date (slam_core/measured_rates.py).
# The same on the 2-core development CPU (bench/results/units-cpu.json, 2026-11-22): HuBERT-base shape and tiny.
CPU_UNITS_X_REALTIME = {"hubert": 12.4, "tiny": 288.6}
# Pair scoring, Slam shape, batched, on an H200 (this project, 2026-11-29).
H200_PAIRS_PER_S = 673.0
# (layers, query heads, head dim) of known bases; parameter counts are the speech LM's (vocabulary of 502).
BASE_SHAPES = {"Qwen/Qwen2.5-0.5B": (358_347_904, 24, 14, 64), "Qwen/Qwen2.5-1.5B": (1_310_000_000, 28, 12, 128)}
# The interleaved LM keeps the text rows too (interleave.enabled): Qwen2.5's 151,665 tokenizer ids x hidden size,
# one tied embedding/head matrix (slam_core.lm.interleave_model: 152,167 rows in all).
INTERLEAVED_EXTRA_PARAMS = {"Qwen/Qwen2.5-0.5B": 151_665 * 896, "Qwen/Qwen2.5-1.5B": 151_665 * 1536}
# The device each paper preset was trained on (Table 3 / Section 5) and Table 4's step count for Slam.
PAPER_GPU = {"slam": "A5000", "slam_scaled": "A100", "slam_large": "A100"}
PAPER_STEPS = {"slam": 17_625}
# Table 4: 1.4 B tokens in 17,625 steps of 128 examples -> the mean example (a chunk of <= 1,024 tokens).
PAPER_TOKENS_PER_EXAMPLE = 1.4e9 / (17_625 * 128)
# Real tokens / buffer tokens when 128 such examples are packed into 8 x 1,024-token buffers (bench/bench_packing.py,
# bench/results/packing-cpu.json, 2026-12-04: 0.950 on the stated length distribution).
PACKING_FILL = 0.95


def recorded_config(cfg: SlamConfig) -> dict[str, Any]:
    """The resolved config exactly as `slam run` records it beside its outputs."""
    return cfg.resolve() | {"code_version": code_version()}


def flops_per_token(cfg: SlamConfig) -> float | None:
    """Training FLOPs per token of the configured base, from its shape (no weights loaded); None if unknown."""
    m = cfg.model
    if m.base in BASE_SHAPES:
        n_params, layers, heads, head_dim = BASE_SHAPES[m.base]
        if cfg.interleave.enabled:
            n_params += INTERLEAVED_EXTRA_PARAMS[m.base]
        return flops_per_token_for(n_params, layers, heads, head_dim, m.context_len)
    if m.base == "tiny-qwen2":
        from slam_core.preflight import model_params

        heads = max(1, m.tiny_hidden_size // 32)
        while m.tiny_hidden_size % heads:
            heads -= 1
        return flops_per_token_for(model_params(cfg), m.tiny_layers, heads, m.tiny_hidden_size // heads, m.context_len)
    config_json = Path(m.base) / "config.json"
    if config_json.is_file():
        from slam_core.preflight import model_params

        c = json.loads(config_json.read_text())
        heads = c.get("num_attention_heads", 0)
        head_dim = c.get("head_dim") or (c.get("hidden_size", 0) // heads if heads else 0)
        return flops_per_token_for(model_params(cfg), c.get("num_hidden_layers", 0), heads, head_dim, m.context_len)
    return None


def detect_gpu() -> tuple[str, int] | None:
    """(name, count) of the visible CUDA devices, or None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0), torch.cuda.device_count()


def pick_device(cfg: SlamConfig, gpu: str | None) -> dict[str, Any]:
    """The device the plan is for: the named one, else the detected one, else the paper's device of the preset,
    else the CPU."""
    if gpu:
        name, how = gpu, "named (--gpu)"
    elif (found := detect_gpu()) is not None:
        name, how = found[0], f"detected ({found[1]} visible)"
    elif cfg.run.device != "cpu" and cfg.run.name in PAPER_GPU:
        name, how = PAPER_GPU[cfg.run.name], "the paper's device for this preset (no GPU detected)"
    else:
        return {"name": "cpu", "how": "no GPU detected", "n": 1, "peak_bf16_flops": None}
    n = cfg.parallel.n_gpus or (found[1] if not gpu and found else 1)
    return {"name": name, "how": how, "n": n, "peak_bf16_flops": peak_flops_for_name(name)}


def tokens_per_example(cfg: SlamConfig) -> float:
    """Assumed mean real tokens of one example: the paper's (1.4 B tokens over 17,625 steps of 128 examples,
    Table 4), at most the context length."""
    return min(float(cfg.model.context_len), PAPER_TOKENS_PER_EXAMPLE)


def expected_tokens_per_step(cfg: SlamConfig) -> float:
    """Real tokens of an optimiser step: its examples (SlamKit's per-device batch x accumulation) x their mean."""
    return cfg.train.sequences_per_step * tokens_per_example(cfg)


def training_budget(cfg: SlamConfig, device: dict[str, Any], mfu: float, tokens_per_s: float | None) -> dict[str, Any]:
    """Steps and tokens the wall-clock budget allows at the given MFU (or measured tokens/s of real tokens).

    At a given MFU the GPU computes whole token buffers, of which PACKING_FILL are real tokens (the rest pads the
    last example that did not fit a buffer; `bench/bench_packing.py`)."""
    fpt = flops_per_token(cfg)
    per_step = expected_tokens_per_step(cfg)
    out: dict[str, Any] = {"budget_s": cfg.train.budget_s, "examples_per_step": cfg.train.sequences_per_step,
                           "tokens_per_step": round(per_step, 1), "max_tokens_per_step": cfg.max_tokens_per_step,
                           "flops_per_token": fpt, "assumed_mfu": None, "tokens_per_s": tokens_per_s}
    if tokens_per_s is None and device["peak_bf16_flops"] and fpt:
        out["assumed_mfu"] = mfu
        tokens_per_s = mfu * device["peak_bf16_flops"] * device["n"] / fpt * PACKING_FILL
        out["tokens_per_s"] = tokens_per_s
    if tokens_per_s:
        steps = math.floor(cfg.train.budget_s * tokens_per_s / per_step)
        steps = min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps
        out |= {"steps": steps, "tokens": round(steps * per_step)}
    else:
        out |= {"steps": None, "tokens": None,
                "why_unknown": "no peak FLOP/s for this device: pass --tokens-per-s (the schedule calibrates itself)"}
    if cfg.run.name in PAPER_STEPS and fpt:
        steps = PAPER_STEPS[cfg.run.name]
        paper_tok_s = steps * per_step / cfg.train.budget_s
        peak = peak_flops_for_name(PAPER_GPU[cfg.run.name]) or 0.0
        out["paper"] = {"steps": steps, "gpu": PAPER_GPU[cfg.run.name], "tokens": round(steps * per_step),
                        "implied_mfu": round(paper_tok_s / PACKING_FILL * fpt / peak, 3) if peak else None}
    return out


def schedule_summary(cfg: SlamConfig, budget: dict[str, Any]) -> dict[str, Any]:
    """The optimiser steps at a glance: examples a step, the steps the budget buys, the paper's count."""
    return {"examples_per_step": cfg.train.sequences_per_step, "optimizer_steps": budget.get("steps"),
            "paper_optimizer_steps": PAPER_STEPS.get(cfg.run.name),
            "tokens_per_example": round(tokens_per_example(cfg), 1), "tokens_per_step": budget["tokens_per_step"],
            "buffer_fill": PACKING_FILL,
            "basis": "SlamKit's step: per-device batch x gradient accumulation examples (chunks of <= context_len "
                     "tokens); tokens per example assumed from the paper (1.4 B tokens / 17,625 steps / 128)"}


def _gpu_units_dtype(cfg: SlamConfig) -> str:
    return "float16" if cfg.units.dtype == "auto" else cfg.units.dtype


def _scale_to(rate: MeasuredRate, device: dict[str, Any]) -> tuple[float, str]:
    """A one-GPU measured rate on the plan's device: as measured on the same kind, else scaled by peak bf16
    FLOP/s (an assumption, said so); times the number of GPUs."""
    measured_peak, peak = peak_flops_for_name(rate.device), device["peak_bf16_flops"]
    if not measured_peak or not peak or peak == measured_peak:
        return rate.x_realtime * device["n"], f"measured on {rate.device} ({rate.date})"
    return (rate.x_realtime * peak / measured_peak * device["n"],
            f"measured on {rate.device} ({rate.date}), scaled by peak FLOP/s to {device['name']}")


def _units_x_realtime(cfg: SlamConfig, device: dict[str, Any]) -> tuple[float, str]:
    if device["name"] == "cpu":
        kind = "tiny" if cfg.units.encoder == "tiny" else "hubert"
        return CPU_UNITS_X_REALTIME[kind], "measured on the 2-core CPU (bench/results/units-cpu.json)"
    rate, how = units_rate(cfg.units.batching, _gpu_units_dtype(cfg))
    scaled, basis = _scale_to(rate, device)
    return scaled, f"{basis}, {cfg.units.batching} batching; {how}"


def preprocessing_cost(cfg: SlamConfig, device: dict[str, Any], sets: list[dict[str, Any]],
                       plan_stages: list[dict[str, Any]]) -> dict[str, Any]:
    """GPU-hours of synthesis and units for the chosen mix at the measured one-GPU rates (device and date named),
    beside the GPU-hours of training, so the whole reproduction's cost shows before any of it is spent."""
    speech_hours = sum(s["hours"] for s in sets if s["role"] in ("train", "validation")
                       and not s["split"].startswith("val ("))
    stories = next((s for s in sets if s["name"] == "stinystories" and s["estimate"] == "Table 8"), None)
    rate, how = units_rate(cfg.units.batching, _gpu_units_dtype(cfg))
    out: dict[str, Any] = {"units": {"audio_hours": round(speech_hours, 1), "batching": cfg.units.batching,
                                     "dtype": _gpu_units_dtype(cfg), "note": how}}
    if rate is not None:
        out["units"] |= {"x_realtime": rate.x_realtime, "gpu_hours": round(speech_hours / rate.x_realtime, 2),
                         "measured": rate.as_dict()}
    synth = kokoro_rate()
    out["synthesis"] = ({"audio_hours": round(stories["hours"], 1), "x_realtime": synth.x_realtime,
                         "gpu_hours": round(stories["hours"] / synth.x_realtime, 2), "measured": synth.as_dict()}
                        if stories is not None else {"audio_hours": 0.0, "gpu_hours": 0.0,
                                                     "note": "nothing to synthesise (sTinyStories is there or not chosen)"})
    n_gpus = device["n"]
    train_s = sum(s["eta_s"] or 0.0 for s in plan_stages if s["name"] in ("pre-training", "DPO"))
    out["training"] = {"gpu_hours": round(train_s / 3600 * n_gpus, 2), "gpus": n_gpus, "device": device["name"],
                       "basis": "pre-training and DPO ETAs of the stages"}
    if cfg.interleave.enabled:  # Whisper on the real-speech interleaved sets (None: unmeasured, not in the total)
        out["alignment"] = alignment_cost(plan_stages)
    gpu_hours = [out["units"].get("gpu_hours"), out["synthesis"]["gpu_hours"], out["training"]["gpu_hours"],
                 out.get("alignment", {}).get("gpu_hours")]
    out["total_gpu_hours"] = round(sum(h for h in gpu_hours if h is not None), 2)
    out["basis"] = ("one-GPU rates of bench/results/*-gpu.json when committed, else the table in "
                    "slam_core/measured_rates.py; synthesis and units hours are on the measuring GPU, training "
                    "hours on the plan's device")
    return out


def _eval_pairs(cfg: SlamConfig) -> int | None:
    ref = cfg.eval.reference_path
    if not ref or not Path(ref).is_dir():
        return None
    return sum(1 for _ in Path(ref).rglob("*.wav")) // 2


def stages(cfg: SlamConfig, device: dict[str, Any], sets: list[dict[str, Any]], budget: dict[str, Any]
           ) -> list[dict[str, Any]]:
    """Each stage with its ETA in seconds (None: cannot be estimated, with the reason) and the basis."""
    out = []
    downloads = pending_downloads(cfg)
    down_bytes = sum(d["bytes"] for d in downloads)
    out.append({"name": "fetch corpora", "eta_s": down_bytes / ASSUMED_DOWNLOAD_BYTES_PER_S, "bytes": down_bytes,
                "parts": [f"{d['source']}/{d['part']}" for d in downloads],
                "basis": f"assumed {ASSUMED_DOWNLOAD_BYTES_PER_S / 1e6:.0f} MB/s download"})
    stories = next((s for s in sets if s["name"] == "stinystories"), None)
    if stories is not None and stories["estimate"] == "Table 8":
        synth_rate, synth_basis = _scale_to(kokoro_rate(), device) if device["name"] != "cpu" else (None, "")
        out.append({"name": "synthesise sTinyStories",
                    "eta_s": stories["hours"] * 3600 / synth_rate if synth_rate else None,
                    "basis": (f"Kokoro {synth_rate:,.0f}x real time, {synth_basis}" if synth_rate else
                              "Kokoro on a CPU: unmeasured") + "; or fetch the published set with "
                    "`slam data prepare stinystories`"})
    speech_hours = sum(s["hours"] for s in sets if s["role"] in ("train", "validation")
                       and not s["split"].startswith("val ("))
    rate, basis = _units_x_realtime(cfg, device)
    out.append({"name": "segments + units", "eta_s": speech_hours * 3600 / rate, "hours": speech_hours,
                "basis": f"{rate:,.0f}x real time, {basis}"})
    quantizer = cfg.quantizer_summary()
    if cfg.units.kmeans_path:
        km = cfg.kmeans_file
        state = "there" if km.is_file() else "MISSING: make it once with `slam units convert-kmeans`"
        out.append({"name": "k-means", "eta_s": 0.0, "basis": f"{quantizer['note']}, read from {km} ({state})"})
    else:
        out.append({"name": "k-means", "eta_s": cfg.units.kmeans_sample_frames / 25 / rate,
                    "basis": f"encode {cfg.units.kmeans_sample_frames:,} frames at {rate:,.0f}x real time; faiss fit "
                             f"not included (unmeasured); {quantizer['note']}"})
    out += interleave_stages(cfg, sets, lambda r: _scale_to(r, device))  # interleaved presets: alignments, docs
    eta, basis = cfg.train.budget_s, "train.budget_s (the schedule ends exactly at it)"
    if cfg.train.max_steps and budget.get("tokens_per_s"):
        capped = cfg.train.max_steps * budget["tokens_per_step"] / budget["tokens_per_s"]
        if capped < eta:
            eta, basis = capped, f"train.max_steps={cfg.train.max_steps} reached before train.budget_s"
    out.append({"name": "pre-training", "eta_s": eta, "steps": budget.get("steps"), "tokens": budget.get("tokens"),
                "basis": basis})
    if cfg.dpo.enabled:
        caps = [f"dpo.{name}={value}" for name, value in (("max_steps", cfg.dpo.max_steps),
                                                             ("max_epochs", cfg.dpo.max_epochs)) if value]
        basis = ("at most dpo.budget_s; " + " or ".join(caps) + " may end it sooner (DPO speed not estimated)"
                 if caps else "dpo.budget_s (DPO runs until it)")
        out.append({"name": "DPO", "eta_s": cfg.dpo.budget_s, "basis": basis})
    pairs = _eval_pairs(cfg)
    if pairs is None:
        out.append({"name": "evaluation", "eta_s": None, "basis": "eval.reference_path not there: published sets "
                    "not counted; generation time unmeasured"})
    else:
        per_s = H200_PAIRS_PER_S * ((device["peak_bf16_flops"] or 0) / BF16_PEAK_FLOPS["H200"])
        out.append({"name": "evaluation", "eta_s": pairs / per_s if per_s else None, "pairs": pairs,
                    "basis": f"{per_s:,.0f} pairs/s (H200 measurement scaled by peak FLOP/s); generation unmeasured"})
    return out


def catalog_view(cfg: SlamConfig) -> tuple[list[dict[str, Any]], str | None]:
    """What the catalog already holds (read-only; [] when there is none), and why it could not be read (a run
    holding its write lock), else None."""
    import duckdb

    from data_catalog import read_only_totals

    try:
        return read_only_totals(cfg.data_root / "catalog.duckdb"), None
    except duckdb.Error as err:  # another process is writing it: plan without it rather than wait
        return [], f"catalog not read ({type(err).__name__}: {str(err).splitlines()[0][:160]})"


def _with_catalog(sets: list[dict[str, Any]], recorded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each set's unit shards in the catalog; where there are some, hours and tokens come from them."""
    units = {(r["dataset"], r["split"]): r for r in recorded if r["stage"] == "units"}
    for s in sets:
        row = units.get((s["name"], s["split"]))
        s["in_catalog"] = ({"unit_shards": row["shards"], "tokens": int(row["tokens"] or 0),
                            "hours": float(row["hours"] or 0.0)} if row else None)
        if row:
            s["hours"], s["tokens"] = float(row["hours"] or 0.0), float(row["tokens"] or 0)
            s["estimate"] = f"catalog ({row['shards']} unit shards)"
    return sets


def resources(cfg: SlamConfig, recorded: list[dict[str, Any]]) -> dict[str, Any]:
    """Disk, memory and GPU memory the run needs (the preflight's estimate), beside what is available."""
    from slam_core.preflight import available_memory_bytes, estimate, free_disk_bytes

    est = estimate(cfg)
    done = sum(int(r["bytes"] or 0) for r in recorded)
    out = {k: {"needed_bytes": sum(v.values()), "parts": v} for k, v in est.items()}
    out["disk"] |= {"already_recorded_bytes": done, "free_bytes": free_disk_bytes(cfg.data_root)}
    out["memory"]["available_bytes"] = available_memory_bytes()
    return out


def build_plan(cfg: SlamConfig, gpu: str | None = None, mfu: float = ASSUMED_MFU,
               tokens_per_s: float | None = None) -> dict[str, Any]:
    """The plan of a run (plain JSON): keys datasets, config, stages, plus device, budget, mix, resources."""
    recorded, unread = catalog_view(cfg)
    sets = _with_catalog([s.as_dict() for s in planned_sets(cfg)], recorded)
    device = pick_device(cfg, gpu)
    budget = training_budget(cfg, device, mfu, tokens_per_s)
    plan_stages = stages(cfg, device, sets, budget)
    known = [s["eta_s"] for s in plan_stages if s["eta_s"] is not None]
    train_sets = sorted({s["name"] for s in sets if s["role"] == "train"})
    weights = cfg.train.dataset_weights
    return {
        "run": cfg.run.name, "data_root": str(cfg.data_root), "device": device,
        "datasets": sets,
        "mix": {"train_sets": train_sets, "weights": weights,
                "rule": "sample-level probabilities = train.dataset_weights" if weights else
                        "each set weighted by its number of examples (a uniform shuffle of all training examples)",
                "token_share_estimate": _token_shares(sets)},
        "schedule": schedule_summary(cfg, budget),
        "preprocessing": preprocessing_cost(cfg, device, sets, plan_stages),
        "budget": budget, "resources": resources(cfg, recorded), "stages": plan_stages,
        "quantizer": cfg.quantizer_summary(), "warnings": cfg.recipe_warnings(),
        "missing_inputs": [{"stage": m.stage, "what": m.what, "field": m.field, "detail": m.detail}
                           for m in missing_inputs(cfg)],
        "eta_total_s": sum(known), "eta_unknown": [s["name"] for s in plan_stages if s["eta_s"] is None],
        "catalog": {"exists": (cfg.data_root / "catalog.duckdb").is_file(), "totals": recorded, "unread": unread},
        "assumptions": {"mfu": mfu if tokens_per_s is None else None,
                        "download_bytes_per_s": ASSUMED_DOWNLOAD_BYTES_PER_S,
                        "flac_bytes_per_s": FLAC_BYTES_PER_S, "spokenswag_pairs": SPOKENSWAG_PAIRS,
                        "tokens_per_hour_table8": {k: round(tokens_per_hour(k)) for k in
                                                   ("librilight", "librispeech", "stinystories")}},
        "config": recorded_config(cfg),
    }


def _token_shares(sets: list[dict[str, Any]]) -> dict[str, float]:
    train = {}
    for s in sets:
        if s["role"] == "train":
            train[s["name"]] = train.get(s["name"], 0.0) + s["tokens"]
    total = sum(train.values()) or 1.0
    return {k: round(v / total, 4) for k, v in train.items()}
