"""Run every benchmark, print ratios against same-process baselines, save bench/results/<name>-<cpu|gpu>.json.

    python -m bench.run_all [--full] [--only units,eval,...]     # every bench's run() (CPU sizes)
    python -m bench.run_all --gpu [--only train,units,...]        # offline GPU host: the GPU parts, <= 6 minutes

`--gpu` first installs the carried wheels (`make wheels` puts them in .wheels/bench/) with
`pip install --no-index --no-deps --target`, checks the imports, then runs each registered GPU part in its own
process with a hard time limit (its budget plus a few seconds' grace; 6 minutes in all). A part gets its budget
and a `save(results)` that writes bench/results/<part>-gpu.json; it saves after every variant, so a part cut
off keeps what it measured, and a part that fails is recorded and the next one runs.
bench/results/gpu-parts.json records each part's exit status and seconds.
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

from bench.common import RESULTS_DIR, machine, save_results

BENCHES = ("vad", "units", "eval", "generate", "train", "synth")
ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = ROOT / ".wheels" / "bench"
SITE_DIR = Path("/tmp/slam-site")
GPU_TOTAL_S = 360.0
GRACE_S = 15.0  # process start and imports, on top of a part's own budget
# GPU parts, in order: name -> ("module:function(budget_s, save)", budget_s). The budgets plus ~8 s of process
# start each fit GPU_TOTAL_S (a part started late gets what is left);
# the training parts come first (the speed the project is judged by), their variants most important first.
GPU_PARTS: dict[str, tuple[str, float]] = {
    "train": ("bench.bench_train:run_gpu_train", 110.0),
    "train_dpo": ("bench.bench_train:run_gpu_dpo", 35.0),
    "units": ("bench.bench_units:run_gpu", 40.0),
    "synth": ("bench.synth_gpu:run_gpu", 35.0),
    "generate": ("bench.bench_generate:run_gpu", 25.0),
    "eval": ("bench.bench_eval:run_gpu", 15.0),
    "train_kernels": ("bench.bench_train:run_gpu_kernels", 30.0),
}


def install_wheels() -> str | None:
    """Install .wheels/bench/*.whl into SITE_DIR (once per host); returns the directory to put on the path."""
    wheels = sorted(WHEEL_DIR.glob("*.whl"))
    if not wheels:
        print(f"no wheels in {WHEEL_DIR} (run `make wheels` where PyPI is reachable); using what is installed")
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
    """Fail fast, with the missing piece named, before any GPU time is spent."""
    import torch

    if not torch.cuda.is_available() and os.environ.get("SLAM_BENCH_DRY_RUN") != "1":
        raise SystemExit("slam: error: --gpu needs a CUDA device — none is visible — run on a GPU host")
    import pydantic  # noqa: F401  (slam_core.config)
    from transformers import Qwen2ForCausalLM  # noqa: F401  (fails when soundfile is carried without cffi)

    from slam_core.lm import train  # noqa: F401


def run_gpu(only: list[str] | None) -> int:
    dry_run = os.environ.get("SLAM_BENCH_DRY_RUN") == "1"  # the train parts on CPU, tiny shape (bench_train.py)
    site = None if dry_run else install_wheels()
    env = dict(os.environ)
    if site:
        env["PYTHONPATH"] = os.pathsep.join([site, str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    subprocess.run([sys.executable, "-c", "from bench.run_all import _check_imports; _check_imports()"],
                   env=env, cwd=ROOT, check=True)
    print(machine(), flush=True)
    t_end = time.monotonic() + GPU_TOTAL_S
    status, failures = {}, 0
    for name, (target, budget_s) in GPU_PARTS.items():
        if only and name not in only:
            continue
        limit = min(budget_s + GRACE_S, t_end - time.monotonic())
        if limit < GRACE_S + 5:
            status[name] = {"status": "skipped: the 6-minute total is used up"}
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
        status[name] = {"status": code if code != 0 else "ok", "seconds": round(time.monotonic() - t0, 1)}
        print(f"[gpu] {name}: {status[name]}", flush=True)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / ("gpu-parts-dryrun.json" if dry_run else "gpu-parts.json")).write_text(
            json.dumps({"machine": machine(), "parts": status}, indent=2) + "\n")
    return 1 if failures else 0


def _run_part(name: str, budget_s: float) -> None:
    """One GPU part, in this process: its errors are saved in its results file, not lost."""
    module, _, function = GPU_PARTS[name][0].partition(":")
    save = lambda results: save_results(name, results, "gpu")  # noqa: E731
    try:
        getattr(importlib.import_module(module), function)(budget_s=budget_s, save=save)
    except Exception as err:  # noqa: BLE001 - recorded beside what the part saved; the parent goes on
        traceback.print_exc()
        path = RESULTS_DIR / f"{name}-gpu.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        save({k: v for k, v in saved.items() if k != "machine"} | {"error": f"{type(err).__name__}: {err}"})
        raise SystemExit(1) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="longer inputs (default: quick sizes for CPU hosts)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(BENCHES)} (CPU) or of "
                        f"{', '.join(GPU_PARTS)} (with --gpu)")
    parser.add_argument("--gpu", action="store_true", help="the GPU parts, time-boxed (6 minutes in all)")
    parser.add_argument("--gpu-part", choices=list(GPU_PARTS), help=argparse.SUPPRESS)  # internal: one part
    parser.add_argument("--budget-s", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    only = args.only.split(",") if args.only else None
    if args.gpu_part:
        _run_part(args.gpu_part, args.budget_s)
        return
    if args.gpu:
        sys.exit(run_gpu(only))
    print(machine())
    for name in only or BENCHES:
        module = importlib.import_module(f"bench.bench_{name}")
        results = module.run(quick=not args.full)
        print(f"  -> {save_results(name, results, results.pop('results_kind', None))}")


if __name__ == "__main__":
    main()
