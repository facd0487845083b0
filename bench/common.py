"""Shared benchmark plumbing: timing, machine facts, results files under bench/results/."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).parent / "results"


def best_of(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Best wall time of `repeats` calls after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def sync() -> None:
    """Wait for queued GPU work (timings must not stop while kernels still run); no-op without CUDA."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def machine() -> dict[str, Any]:
    import transformers

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    return {"device": dev, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.machine()}


def mirror(path: Path) -> None:
    """Copy a results file to $SLAM_RESULTS_MIRROR when set (the GPU check's output folder), as it is written."""
    folder = os.environ.get("SLAM_RESULTS_MIRROR")
    if folder and Path(path).exists():
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(folder) / Path(path).name)


def save_results(name: str, results: dict[str, Any], kind: str | None = None) -> Path:
    """bench/results/<name>-<kind>.json; kind defaults to gpu where CUDA is visible (a bench that measured on the
    CPU anyway says so with kind="cpu")."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    kind = kind or ("gpu" if torch.cuda.is_available() else "cpu")
    out = RESULTS_DIR / f"{name}-{kind}.json"
    out.write_text(json.dumps({"machine": machine(), **results}, indent=2) + "\n")
    mirror(out)
    return out


def speech_lm(device: torch.device):
    """A random unit LM: the Slam shape (Qwen2.5-0.5B, 502 tokens, bf16) on CUDA, a small one on CPU."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if device.type == "cuda":
        cfg = Qwen2Config(vocab_size=502, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                          num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
    else:
        cfg = Qwen2Config(vocab_size=502, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    with device:  # random init where the model runs: on a GPU in well under a second, not seconds on the host CPU
        model = Qwen2ForCausalLM(cfg).eval()
    return model.to(torch.bfloat16) if device.type == "cuda" else model
