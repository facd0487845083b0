"""The demo over several seeds: how far `make demo`'s accuracies move when only the seed changes.

Runs `slam run reproduce --preset smoke --set run.seed=S` once per seed, one after another, each in its own data
root (everything is rebuilt: stories, voices, k-means, initialisation, data order), reads each run's results from
its catalog, prints one row per seed plus mean and range, and writes them to
`bench/results/demo-seeds-cpu.json` (machine, date, commit, per-seed wall time). A seed whose data root already
holds a finished run is served from the cache, so an interrupted sweep resumes where it stopped.

    python scripts/demo_seeds.py --seeds 1234 1 2 3 4 --root /tmp/demo-seeds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_catalog import Catalog  # noqa: E402
from flows.cli_common import non_negative_int  # noqa: E402
from slam_core.atomic import write_text_atomic  # noqa: E402
from slam_core.paths import catalog_path  # noqa: E402

METRICS = ("tsc_like", "ssc_like")


def stage_of(checkpoint: str) -> str:
    """'pretrain' or 'dpo' from a checkpoint path (…/pretrain-<digest>/checkpoints/step-…)."""
    return "dpo" if "/dpo-" in checkpoint else "pretrain"


def seed_results(data_root: Path, run: str = "smoke") -> dict[str, dict[str, float]]:
    """{"<stage> <metric>": {"accuracy", "ci_low", "ci_high", "n"}} of the latest checkpoint of each stage."""
    rows = Catalog(catalog_path(data_root)).eval_results(run=run)
    latest: dict[str, dict] = {}
    for row in rows:
        if row["metric"] not in METRICS:
            continue
        key = f"{stage_of(row['checkpoint'])} {row['metric']}"
        if key not in latest or row["checkpoint"] > latest[key]["checkpoint"]:
            latest[key] = row
    return {k: {"accuracy": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"]}
            for k, r in sorted(latest.items())}


def spread(per_seed: list[dict], key: str) -> dict[str, float]:
    values = [s["results"][key]["accuracy"] for s in per_seed if key in s["results"]]
    if not values:
        return {}
    return {"mean": round(statistics.fmean(values), 4), "min": min(values), "max": max(values), "runs": len(values)}


def run_seed(seed: int, data_root: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "flows.cli", "run", "reproduce", "--preset", "smoke", "--set", f"run.seed={seed}",
           "--data-root", str(data_root), *extra]
    started = time.monotonic()
    log_path = data_root.with_suffix(".log")
    data_root.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"demo_seeds: error: seed {seed} failed (exit {rc}) — {log_path} — read the log's last lines")
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=[1234, 1, 2, 3, 4],
                        help="run.seed values, run one after another (default: the demo's 1234, then 1-4)")
    parser.add_argument("--root", type=Path, default=Path("slam-data-seeds"),
                        help="folder holding one data root per seed (seed-<S>/) and its log (seed-<S>.log)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every seed (repeatable)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "demo-seeds-cpu.json",
                        help="where the per-seed results and their spread are written")
    args = parser.parse_args(argv)
    extra = [a for o in args.overrides for a in ("--set", o)]
    per_seed = []
    for seed in args.seeds:
        data_root = (args.root / f"seed-{seed}").resolve()
        wall_s = run_seed(seed, data_root, extra)
        results = seed_results(data_root)
        per_seed.append({"seed": seed, "wall_s": round(wall_s, 1), "results": results})
        cells = "  ".join(f"{k} {v['accuracy']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" for k, v in results.items())
        print(f"seed {seed:>5}  {wall_s:6.0f} s  {cells}", flush=True)
    keys = sorted({k for s in per_seed for k in s["results"]})
    summary = {k: spread(per_seed, k) for k in keys}
    for k, v in summary.items():
        print(f"{k:>18}: mean {v['mean']:.3f}, range {v['min']:.3f}-{v['max']:.3f} over {v['runs']} seeds")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    record = {"what": "make demo (smoke preset) once per seed", "date": datetime.now(timezone.utc).date().isoformat(),
              "commit": commit, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "overrides": args.overrides, "per_seed": per_seed, "spread": summary}
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
