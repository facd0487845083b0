"""Run every benchmark, print ratios against same-process baselines, save bench/results/<name>-<cpu|gpu>.json.

    python -m bench.run_all [--full] [--only units,eval,...]
"""

from __future__ import annotations

import argparse
import importlib

from bench.common import machine, save_results

BENCHES = ("vad", "units", "eval", "generate", "train", "synth")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="longer inputs (default: quick sizes for CPU hosts)")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {', '.join(BENCHES)}")
    args = parser.parse_args()
    print(machine())
    for name in args.only.split(","):
        module = importlib.import_module(f"bench.bench_{name}")
        results = module.run(quick=not args.full)
        print(f"  -> {save_results(name, results)}")


if __name__ == "__main__":
    main()
