"""Dress rehearsal: the paper recipe end to end on random-weight stand-ins, then the checks a real run needs.

    python scripts/rehearsal.py --size real    # GPU host: real model shapes, minute budgets (make rehearsal-gpu)
    python scripts/rehearsal.py --size tiny    # CPU: the same stages at small widths (make rehearsal)

Stages, each timed (wall seconds, peak GPU memory): build the inputs (slam_core.rehearsal), speak sTinyStories and
SpokenSwag with the Kokoro-82M stand-in (the `synthesize` flow), cut LibriSpeech and Libri-Light (the
`prepare-source` flow), then reproduce's three flows in its order: prepare-data, train-lm (TWIST init,
pre-training, DPO), evaluate (every paper metric + report). Results and checks go to
bench/results/rehearsal-<gpu|cpu>.json after every stage, so a run cut short keeps what it finished.
Exit status 1 when a check fails.

`--runtime plain` (automatic where Prefect's server stack is not installed) runs the flows as plain functions
(flows/plain_runtime.py); `--runtime prefect` runs them under Prefect (ephemeral server unless PREFECT_API_URL).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

NEEDED_MODULES = ("torch", "transformers", "pydantic", "duckdb", "pyarrow", "soundfile", "soxr", "misaki.espeak",
                  "espeakng_loader", "whisper", "safetensors", "filelock", "matplotlib", "tensorboard")
CARRY_DIR = REPO / ".gpu-carry"
log = logging.getLogger("rehearsal")


def check_imports() -> None:
    """Fail in the first second, naming every missing package, rather than minutes into the run."""
    missing = []
    for name in NEEDED_MODULES:
        try:
            importlib.import_module(name)
        except Exception as err:  # a broken install (e.g. soundfile without cffi) fails here too
            missing.append(f"{name} ({type(err).__name__}: {str(err)[:120]})")
    try:
        from slam_core.synth.kokoro_tts import import_kmodel

        import_kmodel()
    except Exception as err:
        missing.append(f"kokoro ({type(err).__name__}: {str(err)[:120]})")
    if missing:
        sys.exit("slam: error: rehearsal needs packages that are not importable — " + "; ".join(missing)
                 + " — install them (`make setup`), or on an offline host the wheels of `make gpu-carry`")


def default_speech_dir() -> Path:
    """The real read-speech recordings: carried beside the repository, or the project's shared data."""
    candidates = [os.environ.get("SLAM_REHEARSAL_SPEECH"), CARRY_DIR / "speech",
                  REPO.parent / "shared" / "data" / "real-speech", "/work/shared/data/real-speech"]
    for cand in candidates:
        if cand and any(Path(cand).glob("*.flac")):
            return Path(cand)
    sys.exit("slam: error: no speech recordings for the rehearsal — --speech DIR — point it at a folder of 16 kHz "
             "FLAC read speech (at least 30 s in all), e.g. ../shared/data/real-speech")


class StageClock:
    """Wall time and peak GPU memory per stage: the allocator's peak in this process and the device-wide peak
    of used memory (sampled every 0.2 s, so worker processes count too)."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.device_peak = 0
        self._stop = threading.Event()
        if self.cuda:
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            free, total = self.torch.cuda.mem_get_info()
            self.device_peak = max(self.device_peak, total - free)

    def run(self, fn, *args, **kwargs) -> tuple[Any, dict[str, Any]]:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
            self.device_peak = 0
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        stats: dict[str, Any] = {"wall_s": round(time.perf_counter() - t0, 2)}
        if self.cuda:
            self.torch.cuda.synchronize()
            stats["peak_gpu_allocated_gib"] = round(self.torch.cuda.max_memory_allocated() / 2**30, 3)
            stats["peak_gpu_device_used_gib"] = round(self.device_peak / 2**30, 3)
        return value, stats


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("real", "tiny"), default="real",
                        help="real: the paper's model shapes (GPU); tiny: small widths, same code paths (CPU)")
    parser.add_argument("--data-root", default=None,
                        help="artifact root of the run (default ./slam-data-rehearsal-<size>)")
    parser.add_argument("--inputs", default=None, help="where the stand-in inputs are built (default <data root>/inputs)")
    parser.add_argument("--speech", default=None, help="folder of 16 kHz FLAC read speech the corpora are cut from "
                                                      "(default .gpu-carry/speech or ../shared/data/real-speech)")
    parser.add_argument("--runtime", choices=("auto", "prefect", "plain"), default="auto",
                        help="prefect: flows under Prefect; plain: flows as plain functions (no server); auto: "
                             "prefect when its server stack is installed")
    parser.add_argument("--seed", type=int, default=42, help="seed of the inputs and of the run")
    parser.add_argument("--out", default=None,
                        help="results JSON (default bench/results/rehearsal-<gpu|cpu>.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override on top of the rehearsal preset (repeatable)")
    return parser.parse_args(argv)


# The CPU variant: the same preset with small batches and budgets (widths come from --size tiny).
TINY_OVERRIDES = {
    "run.device": "cpu", "model.context_len": 128, "train.budget_s": 40.0, "train.micro_batch_size": 4,
    "train.grad_accum": 1, "train.checkpoint_every_s": 15.0, "train.calibration_steps": 2, "dpo.budget_s": 25.0,
    "dpo.micro_batch_size": 2, "dpo.grad_accum": 1, "dpo.warmup_steps": 2, "dpo.max_prompt_tokens": 32,
    "dpo.max_completion_tokens": 48, "eval.n_generate": 2, "eval.max_new_tokens": 24, "eval.asr_max_tokens": 8,
    "eval.batch_size": 8, "eval.generation_batch_size": 4, "units.batch_size": 8, "synth.kokoro_batch_size": 4,
    "synth.kokoro_speed": 20.0, "synth.shard_rows": 4, "units.shard_segments": 8,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("phonemizer").setLevel(logging.ERROR)  # a word-count warning per sentence, harmless here
    from flows import plain_runtime

    runtime = args.runtime if args.runtime != "auto" else ("prefect" if plain_runtime.prefect_available() else "plain")
    if runtime == "plain":
        plain_runtime.install()
    check_imports()

    import torch

    from bench.common import machine, mirror
    from slam_core.config import parse_override
    from slam_core.rehearsal import build

    kind = "gpu" if torch.cuda.is_available() else "cpu"
    out_path = Path(args.out) if args.out else REPO / "bench" / "results" / f"rehearsal-{kind}.json"
    data_root = Path(args.data_root or f"slam-data-rehearsal-{args.size}").resolve()
    inputs_dir = Path(args.inputs).resolve() if args.inputs else data_root / "inputs"
    speech = sorted(Path(args.speech or default_speech_dir()).glob("*.flac"))
    clock = StageClock()
    report: dict[str, Any] = {"machine": machine(), "size": args.size, "runtime": runtime, "data_root": str(data_root),
                              "stages": {}, "checks": [], "ok": None}
    started = time.perf_counter()

    def save() -> None:
        report["total_wall_s"] = round(time.perf_counter() - started, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        os.replace(tmp, out_path)
        mirror(out_path)  # SLAM_RESULTS_MIRROR: the GPU check's output folder

    def stage(name: str, fn, *a, **kw) -> Any:
        print(f"rehearsal: {name} ...", flush=True)
        value, stats = clock.run(fn, *a, **kw)
        report["stages"][name] = stats
        print(f"rehearsal: {name} done in {stats['wall_s']} s", flush=True)
        save()
        return value

    device = "cuda" if kind == "gpu" else "cpu"
    manifest = stage("build-inputs", build.build_inputs, inputs_dir, args.size, args.seed, speech, device)
    report["inputs"] = {k: {f: v for f, v in b.items() if f != "path"} for k, b in manifest["built"].items()}
    overrides = {**build.input_overrides(manifest), "run.seed": args.seed,
                 **(TINY_OVERRIDES if args.size == "tiny" else {}),
                 **dict(parse_override(o) for o in args.overrides)}
    from scripts.rehearsal_stages import run_stages

    ok = run_stages(stage, report, overrides, manifest, data_root)
    report["ok"] = ok
    save()
    print(f"rehearsal: {'all checks passed' if ok else 'CHECKS FAILED'} in {report['total_wall_s']} s; "
          f"results in {out_path}", flush=True)
    for c in report["checks"]:
        print(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']}" + ("" if c["ok"] else f": {c['detail']}"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
