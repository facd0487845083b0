"""The kill drill's audit (scripts/kill_drill.py): which outputs must be byte-identical, the catalog checks, the
figures table."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def compared_files(root: Path, dpo: bool, max_steps: int, dpo_steps: int | None) -> dict[str, str]:
    """Root-relative path -> sha256 of every output the drill requires to be byte-identical."""
    pats = ["units/stories/train/units-*.parquet", "pairs/*.parquet", "units/kmeans/centroids-*.npy",
            "eval/*/generations-*.json",
            f"checkpoints/*/pretrain-*/checkpoints/step-{max_steps:06d}/model.safetensors"]
    if dpo and dpo_steps:
        pats.append(f"checkpoints/*/dpo-*/checkpoints/step-{dpo_steps:06d}/model.safetensors")
    out = {str(p.relative_to(root)): sha256(p) for pat in pats for p in sorted(root.glob(pat))}
    # a generations file is named after its checkpoint's path and mtime, not its weights: compare by content
    for i, p in enumerate(sorted(root.glob("eval/*/generations-*.json"))):
        out[f"{p.parent.relative_to(root)}/generations[{i}].json"] = out.pop(str(p.relative_to(root)))
    return out


def eval_rows(root: Path) -> dict[str, Any]:
    from data_catalog import Catalog

    out = {}
    for r in Catalog(root / "catalog.duckdb").eval_results():
        details = json.loads(r["details"] or "{}")
        ckpt = str(Path(r["checkpoint"]).relative_to(root)) if r["checkpoint"].startswith(str(root)) else r["checkpoint"]
        out[f"{ckpt}|{r['metric']}"] = [r["value"], r["n"], r["ci_low"], r["ci_high"], details.get("per_pair")]
    return out


def catalog_problems(root: Path) -> list[str]:
    """Missing, resized or duplicated outputs in the catalog, and stray partial files beside shards."""
    from data_catalog import Catalog

    problems = []
    rows = Catalog(root / "catalog.duckdb").artifacts()
    by_path: dict[str, set[str]] = {}
    for r in rows:
        path = Path(r["path"])
        by_path.setdefault(r["path"], set()).add(r["fingerprint"])
        if not path.exists():
            problems.append(f"recorded but missing: {path}")
        elif path.is_file() and r["bytes"] != path.stat().st_size:
            problems.append(f"size differs from the record: {path} ({r['bytes']} recorded, {path.stat().st_size} now)")
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                if pq.read_metadata(path).num_rows != r["rows"] and r["stage"] in ("units", "segments", "pairs"):
                    problems.append(f"row count differs from the record: {path}")
            except Exception as err:  # a partial Parquet file has no footer
                problems.append(f"unreadable shard: {path} ({err})")
    problems += [f"one path, several fingerprints: {p}" for p, fps in by_path.items() if len(fps) > 1]
    by_fp: dict[str, list[str]] = {}
    for r in rows:
        by_fp.setdefault(r["fingerprint"], []).append(r["path"])
    problems += [f"one fingerprint, several outputs: {fp} -> {paths}" for fp, paths in by_fp.items() if len(paths) > 1]
    return problems


def stray_temp_files(root: Path) -> list[Path]:
    """Hidden temporaries left by killed writers (never recorded, never read; reported as disk waste)."""
    return sorted(p for p in root.rglob(".*") if p.is_file() and not p.name.startswith(".lock"))


def print_figures(f: dict[str, Any]) -> None:
    print("\nkill | target    | stage at kill | s after launch | uncommitted s | train steps redone | committed redone")
    for i, k in enumerate(f["kills"], 1):
        if k["delivered"]:
            print(f"{i:4d} | {k['target']:<9} | {str(k['stage_at_kill']):<13} | {k['seconds_after_launch']:>14} | "
                  f"{k['uncommitted_work_s']:>13} | "
                  f"{'' if k['train_steps_redone'] is None else k['train_steps_redone']:>18} | "
                  f"{', '.join(k['committed_redone']) or 0}")
        else:
            print(f"{i:4d} | {k['target']:<9} | not delivered ({'; '.join(k['notes'])})")
    print(f"\nkills delivered        {f['kills_delivered']} of {f['kills_planned']} "
          f"(stages hit: {', '.join(f['stages_hit'])})")
    print(f"recoveries             {f['recoveries']} ({f['launches']} launches, the last one finished)")
    print(f"committed shards redone {f['committed_shards_redone']}"
          + (f" (rewritten: {', '.join(f['committed_outputs_rewritten'])})" if f["committed_outputs_rewritten"] else ""))
    print(f"uncommitted work lost  max {f['uncommitted_work_lost_s']['max']} s, "
          f"mean {f['uncommitted_work_lost_s']['mean']} s per kill")
    print(f"training steps redone  max {f['train_steps_redone']['max']} per kill {f['train_steps_redone']['per_kill']}")
    print(f"byte-identical outputs {f['files_identical']} of {f['files_compared']} files, "
          f"{f['eval_results_identical']} of {f['eval_results_compared']} eval results")
    print(f"catalog                {f['catalog_rows']} rows, {len(f['catalog_problems'])} problems")
    print(f"stray temp files       {f['stray_temp_files']} ({f['stray_temp_bytes']} bytes)")
    print(f"wall time              reference {f['reference_wall_s']} s, whole drill {f['drill_wall_s']} s")
    for line in f["files_differing"] + f["eval_results_differing"] + f["catalog_problems"]:
        print(f"  FAIL {line}")
    print("KILL DRILL: " + ("PASSED" if f["ok"] else "FAILED"))
