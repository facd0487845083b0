"""Run every benchmark, print ratios against same-process baselines, save bench/results/<name>-<cpu|gpu>.json.

    python -m bench.run_all [--full] [--only units,eval,...]     # every bench's run() (CPU sizes)
    python -m bench.run_all --gpu [--only train,units,...]        # offline GPU host: the GPU parts, time-boxed
    SLAM_BENCH_DRY_RUN=1 python -m bench.run_all --gpu            # the same parts on the CPU at small sizes

`--gpu` first installs the carried wheels (`make gpu-carry` puts them in .gpu-carry/wheels/) with
`pip install --no-index --no-deps --target` (scripts/gpu_check.sh has done so already), then runs each
registered GPU part in its own process with a hard time limit (its budget plus GRACE_S for process start and
imports; --total-s in all). A part gets its budget and a `save(results)` that writes
bench/results/<part>-gpu.json; it saves after every variant, so a part cut off keeps what it measured, and a part
that fails is recorded and the next one runs. bench/results/gpu-parts.json records each part's budget, exit status
and seconds. The dry run writes *-gpu-dryrun.json instead. With SLAM_RESULTS_MIRROR=DIR every results file is also
copied there when written (the GPU check's $OUT).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench.common import RESULTS_DIR, machine, mirror, save_results

BENCHES = ("vad", "units", "eval", "generate", "train", "packing", "synth")
ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = ROOT / ".gpu-carry" / "wheels"
SITE_DIR = Path("/tmp/slam-site")
GPU_TOTAL_S = 240.0
DRY_RUN = os.environ.get("SLAM_BENCH_DRY_RUN") == "1"
# process start, imports and CUDA start-up, on top of a part's own budget (H200 host: ~5 s); a 2-core CPU host
# shared with other jobs takes 3-10 s for the imports alone
GRACE_S = 20.0 if DRY_RUN else 8.0
# GPU parts, most important figures first: name -> ("module:function", budget_s). Sized from the H200 run of
# 2026-12-04 (docs/performance.md): train: the slam preset (compile 13.3 s, probe, 6 steps of 0.7 s) ~25 s, the
# plain loop ~15 s, one eager micro-batch ~12 s; DPO eager ~15 s, then its compiled form gets the rest (its compile
# time counted: it did not finish in ~15 s); units: all variants in < 40 s; Kokoro one process ~10 s, 4 worker
# processes ~15 s of start-up + 4-10 s; generation and pair scoring save a first figure within seconds. All but the
# last fit GPU_TOTAL_S with their GRACE_S; a part that ends early leaves its time to the next, and train_kernels
# (never measured) gets what is left at the end.
GPU_PARTS: dict[str, tuple[str, float]] = {
    "train": ("bench.bench_train:run_gpu_train", 55.0),
    "train_dpo": ("bench.bench_train:run_gpu_dpo", 45.0),
    "units": ("bench.bench_units:run_gpu", 22.0),
    "synth": ("bench.synth_gpu:run_gpu", 40.0),
    "generate": ("bench.bench_generate:run_gpu", 15.0),
    "eval": ("bench.bench_eval:run_gpu", 10.0),
    "train_kernels": ("bench.bench_train:run_gpu_kernels", 30.0),
}
# Parts whose dry run is their `smoke=True` form (the training parts read SLAM_BENCH_DRY_RUN themselves).
SMOKE_PARTS = ("units", "synth", "generate", "eval")


def install_wheels() -> str | None:
    """Install .gpu-carry/wheels/*.whl into SITE_DIR (once per host); returns the directory to put on the path."""
    wheels = sorted(WHEEL_DIR.glob("*.whl"))
    if not wheels:
        print(f"no wheels in {WHEEL_DIR} (run `make gpu-carry` where PyPI is reachable); using what is installed")
        return None
    stamp = SITE_DIR / ".slam-wheels"
    names = "\n".join(w.name for w in wheels)
    if not (stamp.exists() and stamp.read_text() == names):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(SITE_DIR), *map(str, wheels)], check=True)
        stamp.write_text(names)
    print(f"installed {len(wheels)} wheels into {SITE_DIR}")
    return str(SITE_DIR)


def _check_imports() -> None:
    """Fail fast, with the missing piece named, before any GPU time is spent (scripts/gpu_probe.py checks more)."""
    import torch

    if not torch.cuda.is_available() and not DRY_RUN:
        raise SystemExit("slam: error: --gpu needs a CUDA device — none is visible — run on a GPU host "
                         "(or SLAM_BENCH_DRY_RUN=1 for the dry run on CPU)")
    import pydantic  # noqa: F401  (slam_core.config)
    from transformers import Qwen2ForCausalLM  # noqa: F401  (fails when soundfile is carried without cffi)

    from slam_core.lm import train  # noqa: F401


def run_gpu(only: list[str] | None, total_s: float = GPU_TOTAL_S) -> int:
    site = None if DRY_RUN or str(SITE_DIR) in os.environ.get("PYTHONPATH", "") else install_wheels()
    env = dict(os.environ)
    if site:
        env["PYTHONPATH"] = os.pathsep.join([site, str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    subprocess.run([sys.executable, "-c", "from bench.run_all import _check_imports; _check_imports()"],
                   env=env, cwd=ROOT, check=True)
    print(machine(), flush=True)
    t_end = time.monotonic() + total_s
    status, failures = {}, 0
    status_path = RESULTS_DIR / ("gpu-parts-dryrun.json" if DRY_RUN else "gpu-parts.json")
    kind = "gpu-dryrun" if DRY_RUN else "gpu"
    for name in [n for n in GPU_PARTS if not only or n in only]:  # this run's figures only, never an older run's
        (RESULTS_DIR / f"{name}-{kind}.json").unlink(missing_ok=True)

    def write_status() -> None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        status_path.write_text(json.dumps({"machine": machine(), "total_s": total_s, "grace_s": GRACE_S,
                                           "dry_run": DRY_RUN, "parts": status}, indent=2) + "\n")
        mirror(status_path)

    for name, (target, budget_s) in GPU_PARTS.items():
        if only and name not in only:
            continue
        limit = min(budget_s + GRACE_S, t_end - time.monotonic())
        if limit < GRACE_S + 5:
            status[name] = {"status": f"skipped: the {total_s:.0f} s total is used up", "budget_s": budget_s}
            write_status()
            continue
        print(f"[gpu] {name}: budget {limit - GRACE_S:.0f} s", flush=True)
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "bench.run_all", "--gpu-part", name, "--budget-s", f"{limit - GRACE_S:.0f}"]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # its own session: the part and anything it started
            proc.wait()
            code = "killed at its time limit"
        failures += code != 0
        seconds = round(time.monotonic() - t0, 1)
        status[name] = {"status": code if code != 0 else "ok", "budget_s": round(limit - GRACE_S),
                        "limit_s": round(limit), "seconds": seconds, "within_limit": code != "killed at its time limit"}
        print(f"[gpu] {name}: {status[name]}", flush=True)
        write_status()
    return 1 if failures else 0


def _run_part(name: str, budget_s: float) -> None:
    """One GPU part, in this process: its errors are saved in its results file, not lost."""
    module, _, function = GPU_PARTS[name][0].partition(":")
    kind = "gpu-dryrun" if DRY_RUN else "gpu"
    save = lambda results: save_results(name, results, kind)  # noqa: E731
    extra = {"smoke": True} if DRY_RUN and name in SMOKE_PARTS else {}
    try:
        getattr(importlib.import_module(module), function)(budget_s=budget_s, save=save, **extra)
    except Exception as err:  # noqa: BLE001 - recorded beside what the part saved; the parent goes on
        traceback.print_exc()
        path = RESULTS_DIR / f"{name}-{kind}.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        save({k: v for k, v in saved.items() if k != "machine"} | {"error": f"{type(err).__name__}: {err}"})
        raise SystemExit(1) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="longer inputs (default: quick sizes for CPU hosts)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(BENCHES)} (CPU) or of "
                        f"{', '.join(GPU_PARTS)} (with --gpu)")
    parser.add_argument("--gpu", action="store_true", help="the GPU parts, time-boxed (--total-s in all)")
    parser.add_argument("--total-s", type=float, default=GPU_TOTAL_S, help="with --gpu: seconds for all parts")
    parser.add_argument("--gpu-part", choices=list(GPU_PARTS), help=argparse.SUPPRESS)  # internal: one part
    parser.add_argument("--budget-s", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    only = args.only.split(",") if args.only else None
    if args.gpu_part:
        _run_part(args.gpu_part, args.budget_s)
        return
    if args.gpu:
        sys.exit(run_gpu(only, args.total_s))
    print(machine())
    for name in only or BENCHES:
        module = importlib.import_module(f"bench.bench_{name}")
        results = module.run(quick=not args.full)
        print(f"  -> {save_results(name, results, results.pop('results_kind', None))}")


if __name__ == "__main__":
    main()
