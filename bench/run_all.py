"""Run every benchmark, print ratios against same-process baselines, save bench/results/<name>-<cpu|gpu>.json.

    python -m bench.run_all [--full] [--only units,eval,...]
    python -m bench.run_all --gpu [--only units,synth,generate,eval]   # the GPU parts, time-boxed, on a CUDA host

With --gpu each part gets its own time budget (seconds, below), writes its results file after every sub-part
(a part cut short keeps what it measured), and a part that fails is recorded in its file and the next runs.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback

from bench.common import machine, save_results

BENCHES = ("vad", "units", "eval", "generate", "train", "synth")
# GPU parts: results name -> (module with run_gpu(budget_s, save), budget_s). The four together stay under
# ~5 minutes on an H100/H200, leaving room in the 6-minute GPU bench for the training part.
GPU_BENCHES = {
    "units": ("bench.bench_units", 80.0),
    "synth": ("bench.synth_gpu", 100.0),
    "generate": ("bench.bench_generate", 60.0),
    "eval": ("bench.bench_eval", 30.0),
}


def _gpu(names: list[str]) -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("slam: error: --gpu needs a CUDA device — none is visible — run on a GPU host")
    for name in names:
        module_name, budget_s = GPU_BENCHES[name]
        t0 = time.perf_counter()
        save = lambda results, name=name: save_results(name, results)  # noqa: E731
        try:
            importlib.import_module(module_name).run_gpu(budget_s=budget_s, save=save)
        except Exception as err:  # noqa: BLE001 - one part's failure must not lose the others
            traceback.print_exc()
            save({"error": f"{type(err).__name__}: {err}"})
        print(f"  -> {name}: {time.perf_counter() - t0:.0f} s (budget {budget_s:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="longer inputs (default: quick sizes for CPU hosts)")
    parser.add_argument("--gpu", action="store_true", help=f"the time-boxed GPU parts ({', '.join(GPU_BENCHES)})")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(BENCHES)}")
    args = parser.parse_args()
    print(machine())
    if args.gpu:
        _gpu(args.only.split(",") if args.only else list(GPU_BENCHES))
        return
    for name in (args.only or ",".join(BENCHES)).split(","):
        module = importlib.import_module(f"bench.bench_{name}")
        results = module.run(quick=not args.full)
        print(f"  -> {save_results(name, results)}")


if __name__ == "__main__":
    main()
