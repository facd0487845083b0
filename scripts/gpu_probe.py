"""The GPU check's first second: import and briefly exercise everything the GPU benches and the dress rehearsal
will, and name every missing module at once (exit 2) before any GPU time is spent.

    python scripts/gpu_probe.py            # on the GPU host (scripts/gpu_check.sh runs it first) or in the twin

Lazy imports are reached by calling the code that makes them: auto-BLEU's tokenizer (nltk), the catalog's
TIMESTAMPTZ columns (duckdb imports pytz to return them), an audio round trip (soundfile + cffi, soxr), Kokoro's
model and G2P (misaki's espeak, espeakng-loader), Whisper, TensorBoard's writer, a matplotlib figure, and every
flow and task module (on flows/plain_runtime.py where Prefect is absent).
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

MODULES = ("torch", "transformers", "pydantic", "duckdb", "pyarrow", "numpy", "soundfile", "soxr", "safetensors",
           "filelock", "matplotlib", "tensorboard", "rich", "tqdm", "whisper", "misaki.espeak", "espeakng_loader",
           "nltk", "loguru", "slam_core.config", "slam_core.lm.train", "slam_core.lm.dpo", "slam_core.lm.tuning",
           "bench.bench_train", "bench.train_variants", "bench.bench_units", "bench.bench_generate",
           "bench.bench_eval", "bench.synth_gpu", "scripts.rehearsal_stages")


def _auto_bleu() -> None:
    from slam_core.eval.text_metrics import auto_bleu

    assert auto_bleu("the cat sat on the mat and the cat sat") > 0


def _catalog_timestamps() -> None:
    from data_catalog import Catalog

    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog(Path(tmp) / "catalog.duckdb")
        catalog.record_eval("probe", "ckpt", "tsc", 0.5, 1)
        rows = catalog.eval_results("probe")  # created_at comes back as a datetime: duckdb imports pytz here
        assert rows and rows[0]["created_at"] is not None


def _audio_round_trip() -> None:
    import numpy as np
    import soundfile
    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        wave = np.sin(np.linspace(0, 400, 24_000)).astype(np.float32)
        soundfile.write(Path(tmp) / "a.flac", soxr.resample(wave, 24_000, 16_000), 16_000)
        assert soundfile.read(Path(tmp) / "a.flac")[0].size == 16_000


def _qwen2() -> None:
    from transformers import Qwen2ForCausalLM  # noqa: F401  (fails when soundfile is carried without cffi)


def _kokoro() -> None:
    from slam_core.synth.kokoro_tts import import_kmodel

    import_kmodel()
    from misaki import espeak  # noqa: F401


def _tensorboard() -> None:
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(tmp)
        writer.add_scalar("probe", 1.0, 0)
        writer.close()


def _figure() -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    plt.close(fig)


def _flows_and_tasks() -> None:
    from flows import plain_runtime

    if not plain_runtime.prefect_available():
        plain_runtime.install()
    for folder in ("tasks", "flows"):
        for path in sorted((REPO / folder).glob("*.py")):
            if path.stem not in ("__init__", "cli", "plain_runtime", "serve", "deploy"):
                importlib.import_module(f"{folder}.{path.stem}")


def _liger() -> None:
    import torch

    if torch.cuda.is_available():  # the train_kernels part; triton kernels run on CUDA only
        import liger_kernel.transformers  # noqa: F401


CALLS: tuple[tuple[str, Callable[[], None]], ...] = (
    ("auto-BLEU tokenizer", _auto_bleu), ("catalog timestamps", _catalog_timestamps),
    ("audio round trip", _audio_round_trip), ("Qwen2 model class", _qwen2), ("Kokoro model and G2P", _kokoro),
    ("TensorBoard writer", _tensorboard), ("matplotlib figure", _figure), ("flows and tasks", _flows_and_tasks),
    ("liger-kernel (CUDA)", _liger),
)


def _missing_name(err: BaseException) -> str:
    """What an import error comes down to: the missing module's name where one is named (in the error or the
    errors that caused it; duckdb's own message names it in quotes), else the first line of the root error."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in chain:
        if isinstance(e, ModuleNotFoundError) and e.name:
            return f"missing module '{e.name}'"
        if "Required module '" in str(e):
            return f"missing module '{str(e).split(chr(39), 2)[1]}'"
    root = chain[-1]
    return f"{type(root).__name__}: {str(root).splitlines()[0][:160] if str(root) else ''}"


def probe() -> list[str]:
    problems = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - a broken install (soundfile without cffi) counts too
            problems.append(f"import {name}: {_missing_name(err)}")
    for label, call in CALLS:
        try:
            call()
        except Exception as err:  # noqa: BLE001
            if os.environ.get("SLAM_PROBE_TRACEBACK") == "1":
                traceback.print_exc()
            problems.append(f"{label}: {_missing_name(err)}")
    return problems


def main() -> int:
    problems = probe()
    if problems:
        print("slam: error: the GPU check needs modules that are not importable here — "
              + "; ".join(problems) + " — carry their wheels (requirements/gpu-carry.txt, then `make gpu-carry`)",
              file=sys.stderr)
        return 2
    print(f"gpu probe: {len(MODULES)} modules and {len(CALLS)} call paths import", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
