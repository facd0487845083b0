"""Kill drill: SIGKILL the smoke reproduction at seeded random points in every stage, rerun until it finishes,
and prove that nothing was lost or corrupted.

    python scripts/kill_drill.py --kills 20 --seed 0 [--preset smoke] [--set k=v ...] [--workdir DIR] [--keep]

1. Reference: one uninterrupted reproduction in <workdir>/reference. The commit time of each stage's outputs
   (file mtimes) gives every stage a measured window.
2. Drill: the same reproduction in <workdir>/drill, started as a subprocess in its own process group. Kill k
   targets a stage (seeded, spread over every stage) and a seeded fraction of that stage's window: the drill
   waits until the run has started its flow and finished the stages before the target, sleeps that fraction
   of the window, and SIGKILLs the whole group (flow, Prefect's ephemeral server, any workers). Then it
   starts the run again, and so on, until a run finishes.
3. Checks: the run finished; unit shards, spoken-pair units, final checkpoint weights, generations and eval
   results are byte-identical to the reference; the catalog records no missing, resized, duplicated or
   partial output; no committed shard was produced twice.

Training is budgeted by wall clock, so byte-identity needs step caps: the drill config caps pre-training and
DPO by steps with a budget far larger than they need (see DRILL_CONFIG), which makes their schedules depend
on the step count only. Figures printed: kills delivered, recoveries, committed shards redone, seconds of
uncommitted work lost per kill, training steps redone per kill (last logged step minus the step of the
checkpoint it resumed from), stray temporary files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from drill_audit import (  # noqa: E402
    catalog_problems, compared_files, eval_rows, print_figures, stray_temp_files,
)

# A reduced smoke run (about 2 min cold on 2 cores) with step-capped training: byte-identical across resumes.
DRILL_CONFIG: dict[str, str] = {
    "corpus.n_train_stories": "48", "corpus.n_heldout_stories": "16", "corpus.n_swag_train": "8",
    "corpus.n_swag_heldout": "16", "synth.stories_per_recording": "4", "vad.shard_recordings": "2",
    "units.n_units": "32", "units.kmeans_sample_frames": "2000", "units.kmeans_iters": "3",
    "train.max_steps": "40", "train.budget_s": "36000", "train.checkpoint_every_s": "3", "train.log_every_steps": "1",
    "dpo.max_steps": "24", "dpo.budget_s": "36000", "dpo.checkpoint_every_s": "2",
    "eval.n_generate": "2", "eval.max_new_tokens": "30",
}


@dataclass(frozen=True)
class Stage:
    name: str
    patterns: tuple[str, ...]  # committed outputs under the data root (hidden temporary names never match)


def stages(max_steps: int, dpo_steps: int | None) -> list[Stage]:
    """The reproduction's stages in order, each with the files that mark its committed outputs."""
    out = [
        Stage("corpus", ("raw/builtin/stories.parquet",)),
        Stage("synth", ("synth/stories/train/recordings-*.parquet", "synth/pairs/*.parquet")),
        Stage("segments", ("segments/stories/train/segments-*.parquet",)),
        Stage("kmeans", ("units/kmeans/centroids-*.npy",)),
        Stage("units", ("units/stories/train/units-*.parquet", "pairs/*.parquet")),
        Stage("init", ("models/speech-lm-init-*/model.safetensors",)),
        Stage("pretrain", (f"checkpoints/*/pretrain-*/checkpoints/step-{max_steps:06d}/model.safetensors",)),
    ]
    if dpo_steps:
        out.append(Stage("dpo", (f"checkpoints/*/dpo-*/checkpoints/step-{dpo_steps:06d}/model.safetensors",)))
    out.append(Stage("eval", ("eval/*/generations-*.json", "reports/*/index.html")))
    return out


def outputs(root: Path, stage: Stage) -> list[Path]:
    found = {p for pat in stage.patterns for p in root.glob(pat)}
    return sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(root).parts))


# ---- running the reproduction ------------------------------------------------------------------------------
def command(preset: str, overrides: dict[str, str], root: Path) -> list[str]:
    cmd = [sys.executable, "-m", "flows.reproduce", "--preset", preset, "--data-root", str(root)]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


CODE_DIRS = ("flows", "tasks", "slam_core", "data_catalog")


def snapshot_code(workdir: Path) -> Path:
    """A frozen copy of the pipeline code: stage fingerprints include the code version, so an edit in the
    checkout while the drill runs must not change them between the reference and the drill."""
    code = workdir / "code"
    shutil.rmtree(code, ignore_errors=True)
    for name in CODE_DIRS:
        shutil.copytree(REPO / name, code / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return code


def launch(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")
    log.write(f"\n===== launch {time.strftime('%H:%M:%S')} =====\n".encode())
    log.flush()
    # own session = own process group: the kill takes the flow and everything it started (ephemeral server)
    return subprocess.Popen(cmd, cwd=env["SLAM_DRILL_CODE"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def drill_env(workdir: Path, code: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PREFECT_HOME": str(workdir / "prefect-home"), "DO_NOT_TRACK": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(workdir / "prefect-results"),
                "PYTHONPATH": str(code) + os.pathsep + env.get("PYTHONPATH", ""), "SLAM_DRILL_CODE": str(code)})
    return env


def flow_started_at(root: Path, run_name: str) -> float | None:
    """mtime of the receipt the reproduce flow writes first thing (after Prefect has started)."""
    receipt = root / "runs" / run_name / "reproduce.config.json"
    return receipt.stat().st_mtime if receipt.exists() else None


# ---- the reference --------------------------------------------------------------------------------------------
def run_reference(cmd: list[str], env: dict[str, str], root: Path, log_path: Path, plan: list[Stage],
                  run_name: str) -> dict[str, Any]:
    t0 = time.time()
    proc = launch(cmd, env, log_path)
    if proc.wait() != 0:
        raise SystemExit(f"reference run failed (rc {proc.returncode}); see {log_path}")
    wall_s = time.time() - t0
    start = flow_started_at(root, run_name) or t0
    windows, counts, prev_end = {}, {}, start
    for stage in plan:
        files = outputs(root, stage)
        if not files:
            raise SystemExit(f"reference run has no outputs for stage {stage.name} ({stage.patterns})")
        end = max(f.stat().st_mtime for f in files)
        windows[stage.name] = max(1.0, end - prev_end)
        counts[stage.name] = len(files)
        prev_end = max(prev_end, end)
    return {"wall_s": wall_s, "startup_s": start - t0, "windows_s": windows, "counts": counts, "steps": {}}


# ---- the drill ---------------------------------------------------------------------------------------------
@dataclass
class Kill:
    target: str
    fraction: float
    delivered: bool = False
    stage_at_kill: str | None = None
    seconds_after_launch: float | None = None
    uncommitted_work_s: float | None = None
    train_steps_redone: int | None = None
    catalog_rows_at_kill: int = 0
    committed_redone: list[str] = field(default_factory=list)  # "stage:file" recorded before, written again
    notes: list[str] = field(default_factory=list)


def plan_kills(n: int, seed: int, plan: list[Stage], windows_s: dict[str, float] | None = None) -> list[Kill]:
    """n kills at seeded fractions of stage windows. Every stage is hit once before any is hit twice, longest
    stages first (a random moment of a real run falls in them most often); kills beyond that go to stages
    drawn with probability proportional to their window."""
    rng = random.Random(seed)
    names = [s.name for s in plan]
    weights = [max(1e-3, (windows_s or {}).get(name, 1.0)) for name in names]
    by_length = [name for _, name in sorted(zip(weights, names), key=lambda wn: -wn[0])]
    targets = by_length[:n] + rng.choices(names, weights=weights, k=max(0, n - len(names)))
    kills = [Kill(t, round(rng.uniform(0.1, 0.9), 3)) for t in targets]
    return sorted(kills, key=lambda k: (names.index(k.target), k.fraction))


def first_incomplete(root: Path, plan: list[Stage], counts: dict[str, int]) -> str | None:
    for stage in plan:
        if len(outputs(root, stage)) < counts[stage.name]:
            return stage.name
    return None


def last_commit_time(root: Path, plan: list[Stage]) -> float:
    """When the newest committed output (a stage output or a training checkpoint) appeared."""
    files = [f for stage in plan for f in outputs(root, stage)]
    files += [f for f in root.glob("checkpoints/*/*/checkpoints/step-*/model.safetensors")
              if not any(part.startswith(".") for part in f.relative_to(root).parts)]
    return max((f.stat().st_mtime for f in files), default=0.0)


def training_step(root: Path, kind: str) -> int:
    """The last optimiser step a training stage ('pretrain' or 'dpo') has logged in its metrics.csv."""
    last = 0
    for metrics in root.glob(f"checkpoints/*/{kind}-*/metrics.csv"):
        for line in metrics.read_text().splitlines()[1:]:
            head = line.split(",", 1)[0]
            last = max(last, int(head)) if head.isdigit() else last
    return last


def training_position(root: Path) -> tuple[int, int] | None:
    """(last logged step, step of the latest checkpoint) of the training run that is going on, if any."""
    for kind in ("dpo", "pretrain"):
        for run_dir in sorted(root.glob(f"checkpoints/*/{kind}-*")):
            metrics = run_dir / "metrics.csv"
            if not metrics.exists():
                continue
            steps = [int(line.split(",", 1)[0]) for line in metrics.read_text().splitlines()[1:]
                     if line and line.split(",", 1)[0].isdigit()]
            pointer = run_dir / "checkpoints" / "latest"
            ckpt_step = int(pointer.read_text().strip().split("-")[1]) if pointer.exists() else 0
            if steps and max(steps) > ckpt_step:
                return max(steps), ckpt_step
    return None


def catalog_rows(root: Path) -> dict[tuple[str, str], str]:
    from data_catalog import Catalog

    db = root / "catalog.duckdb"
    if not db.exists():
        return {}
    return {(r["path"], r["fingerprint"]): (str(r["created_at"]), r["stage"]) for r in Catalog(db).artifacts()}


def run_drill(cmd, env, root: Path, log_path: Path, plan: list[Stage], ref: dict[str, Any], kills: list[Kill],
              run_name: str, timeout_s: float) -> dict[str, Any]:
    """Launch, kill at the next planned point, relaunch, ... until a launch finishes by itself."""
    snapshots: list[dict[tuple[str, str], str]] = []
    launches, pending = 0, list(kills)
    deadline = time.time() + timeout_s
    while True:
        launched_at = time.time()
        proc = launch(cmd, env, log_path)
        launches += 1
        killed = bool(pending) and _kill_at(proc, pending[0], root, plan, ref, run_name, launched_at, deadline)
        if killed:
            kill = pending.pop(0)
            snapshot = catalog_rows(root)
            kill.catalog_rows_at_kill = len(snapshot)
            snapshots.append(snapshot)
            print(f"  kill {len(kills) - len(pending)}/{len(kills)}: target {kill.target} at {kill.fraction:.0%}, "
                  f"stage at kill {kill.stage_at_kill}, {kill.seconds_after_launch} s after launch, "
                  f"{kill.uncommitted_work_s} s uncommitted", flush=True)
            continue
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise SystemExit(f"drill timed out after {timeout_s:.0f} s; see {log_path}") from None
        if proc.returncode != 0:
            raise SystemExit(f"drill run failed by itself (rc {proc.returncode}); see {log_path}")
        for k in pending:
            k.notes.append("run finished before this kill point")
        break
    final = catalog_rows(root)
    # a row committed before kill k and written again by the next launch is committed work redone
    delivered = [k for k in kills if k.delivered]
    for kill, before, after in zip(delivered, snapshots, snapshots[1:] + [final]):
        kill.committed_redone = sorted(f"{stage}:{Path(key[0]).name}" for key, (created, stage) in before.items()
                                       if after.get(key, (None,))[0] != created)
    return {"launches": launches, "final_rows": len(final)}


def _kill_at(proc: subprocess.Popen, kill: Kill, root: Path, plan: list[Stage], ref: dict[str, Any], run_name: str,
             launched_at: float, deadline: float) -> bool:
    """Wait for the kill point of `kill` and SIGKILL the process group; False when the run ended first."""
    names = [s.name for s in plan]
    while True:
        if proc.poll() is not None:
            return False
        if time.time() > deadline:
            return False
        started = flow_started_at(root, run_name)
        current = first_incomplete(root, plan, ref["counts"])
        if started is not None and started > launched_at and (
                current is None or names.index(current) >= names.index(kill.target)):
            break
        time.sleep(0.2)
    # sleep into the target stage (or, when the target is already done, into the stage in progress); the
    # machine may run faster than during the reference, so the kill also comes when that stage completes
    stage = kill.target if current in (kill.target, None) else current
    wake = time.time() + kill.fraction * ref["windows_s"][stage]
    # training stages: the point is a fraction of the optimiser steps (exact, whatever the machine's speed)
    target_step = max(1, round(kill.fraction * ref["steps"][stage])) if ref["steps"].get(stage) else None
    while current is not None and names.index(current) <= names.index(stage):
        if proc.poll() is not None:
            return False
        if target_step is None and time.time() >= wake:
            break
        if target_step is not None and training_step(root, stage) >= target_step:
            break
        time.sleep(0.2)
        current = first_incomplete(root, plan, ref["counts"])
    position = training_position(root)
    kill.stage_at_kill = first_incomplete(root, plan, ref["counts"]) or "report"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = time.time()
    kill.delivered = True
    kill.seconds_after_launch = round(killed_at - launched_at, 1)
    kill.uncommitted_work_s = round(killed_at - max(last_commit_time(root, plan), started), 1)
    if kill.stage_at_kill in ("pretrain", "dpo"):
        kill.train_steps_redone = position[0] - position[1] if position else 0
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="number of SIGKILLs spread over the stages")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points (stage and position)")
    parser.add_argument("--preset", default="smoke", help="preset to reproduce (the drill config is applied on top)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override on top of the drill config (repeatable)")
    parser.add_argument("--no-drill-config", action="store_true",
                        help="do not apply the reduced, step-capped drill config (only --set values)")
    parser.add_argument("--workdir", default=None, help="where the reference and drill data roots go (default: tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="give up on the drill after this long")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    from slam_core.config import apply_overrides, parse_override
    from slam_core.presets import get_preset

    overrides = {} if args.no_drill_config else dict(DRILL_CONFIG)
    overrides |= dict(parse_override(o) for o in args.overrides)
    cfg = apply_overrides(get_preset(args.preset), overrides)
    if cfg.train.max_steps is None or (cfg.dpo.enabled and cfg.dpo.max_steps is None):
        print("warning: training is not step-capped; final weights depend on wall-clock speed and will differ",
              file=sys.stderr)
    max_steps, dpo_steps = cfg.train.max_steps or 0, cfg.dpo.max_steps if cfg.dpo.enabled else None
    plan = stages(max_steps, dpo_steps)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="slam-kill-drill-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = drill_env(workdir, snapshot_code(workdir))
    ref_root, drill_root = workdir / "reference", workdir / "drill"
    for root in (ref_root, drill_root):
        shutil.rmtree(root, ignore_errors=True)
    t_start = time.time()
    print(f"kill drill: {args.kills} kills, seed {args.seed}, preset {args.preset}, work dir {workdir}", flush=True)
    print("reference run (uninterrupted) ...", flush=True)
    ref = run_reference(command(args.preset, overrides, ref_root), env, ref_root, workdir / "reference.log", plan,
                        cfg.run.name)
    print(f"  {ref['wall_s']:.0f} s; stage windows: " +
          ", ".join(f"{k} {v:.0f} s" for k, v in ref["windows_s"].items()), flush=True)

    ref["steps"] = {"pretrain": max_steps, "dpo": dpo_steps or 0}
    kills = plan_kills(args.kills, args.seed, plan, ref["windows_s"])
    print(f"drill run with {len(kills)} kills ...", flush=True)
    drill = run_drill(command(args.preset, overrides, drill_root), env, drill_root, workdir / "drill.log", plan, ref,
                      kills, cfg.run.name, args.timeout_s)

    ref_files = compared_files(ref_root, cfg.dpo.enabled, max_steps, dpo_steps)
    drill_files = compared_files(drill_root, cfg.dpo.enabled, max_steps, dpo_steps)
    differing = sorted(k for k in ref_files.keys() | drill_files.keys() if ref_files.get(k) != drill_files.get(k))
    ref_eval, drill_eval = eval_rows(ref_root), eval_rows(drill_root)
    eval_diff = sorted(k for k in ref_eval.keys() | drill_eval.keys() if ref_eval.get(k) != drill_eval.get(k))
    problems = catalog_problems(drill_root)
    strays = stray_temp_files(drill_root)

    delivered = [k for k in kills if k.delivered]
    train_redone = [k.train_steps_redone for k in delivered if k.train_steps_redone is not None]
    lost = [k.uncommitted_work_s for k in delivered if k.uncommitted_work_s is not None]
    redone = [r for k in delivered for r in k.committed_redone]
    # the HTML report is a summary that write-report rewrites whenever it runs (no shard, no training): listed
    shards_redone = [r for r in redone if not r.startswith("reports:")]
    ok = (not differing and not eval_diff and not problems and not shards_redone and bool(ref_eval)
          and len(ref_files) >= len(plan))
    figures = {
        "kills_planned": len(kills), "kills_delivered": len(delivered),
        "recoveries": drill["launches"] - 1,  # every relaunch after a kill went on (the last one finished)
        "launches": drill["launches"], "finished": True,
        "stages_hit": sorted({k.stage_at_kill for k in delivered if k.stage_at_kill}),
        "committed_shards_redone": len(shards_redone), "committed_outputs_rewritten": redone,
        "uncommitted_work_lost_s": {"max": max(lost, default=0), "mean": round(sum(lost) / len(lost), 1) if lost else 0},
        "train_steps_redone": {"max": max(train_redone, default=0), "per_kill": train_redone},
        "files_compared": len(ref_files), "files_differing": differing,
        "files_identical": sum(1 for k, v in ref_files.items() if drill_files.get(k) == v),
        "eval_results_compared": len(ref_eval), "eval_results_differing": eval_diff,
        "eval_results_identical": sum(1 for k, v in ref_eval.items() if drill_eval.get(k) == v),
        "catalog_problems": problems, "catalog_rows": drill["final_rows"],
        "stray_temp_files": len(strays), "stray_temp_bytes": sum(p.stat().st_size for p in strays),
        "reference_wall_s": round(ref["wall_s"], 1), "drill_wall_s": round(time.time() - t_start, 1),
        "kills": [asdict(k) for k in kills], "ok": ok,
    }
    print_figures(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    if not args.keep and ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work dir kept: {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
