"""What a finished rehearsal must satisfy before anyone spends a GPU-day on the real run.

Each check returns {"check", "ok", "detail"}; `failed(checks)` lists the ones that did not hold. They read the
run's files and catalog only, so they apply to any run of the recipe, not just the rehearsal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq


Check = dict[str, Any]


def _result(name: str, ok: bool, detail: Any) -> Check:
    return {"check": name, "ok": bool(ok), "detail": detail}


def failed(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if not c["ok"]]


def finite_columns(name: str, rows: Sequence[dict[str, float | None]], columns: Sequence[str]) -> Check:
    """Every logged value of `columns` is finite (a NaN or inf loss, gradient norm or margin fails)."""
    bad = [(int(r.get("step") or -1), c, r[c]) for r in rows for c in columns
           if r.get(c) is not None and not math.isfinite(r[c])]
    missing = [c for c in columns if not any(r.get(c) is not None for r in rows)]
    return _result(f"{name}: finite {', '.join(columns)}", rows and not bad and not missing,
                   {"rows": len(rows), "non_finite": bad[:10], "never_logged": missing})


def trend(name: str, rows: Sequence[dict[str, float | None]], column: str, direction: str) -> Check:
    """The mean of `column` over the last third of the logged steps is below ("down") or above ("up") its
    mean over the first third; needs at least three logged steps."""
    values = [r[column] for r in rows if r.get(column) is not None and math.isfinite(r[column])]
    if len(values) < 3:
        return _result(f"{name}: {column} goes {direction}", False, {"logged_steps": len(values),
                                                                     "why": "fewer than 3 logged steps"})
    third = max(1, len(values) // 3)
    first, last = float(np.mean(values[:third])), float(np.mean(values[-third:]))
    ok = last < first if direction == "down" else last > first
    return _result(f"{name}: {column} goes {direction}", ok,
                   {"first_third_mean": round(first, 5), "last_third_mean": round(last, 5), "logged_steps": len(values)})


def finite_weights(name: str, checkpoint: str | Path) -> Check:
    """Every tensor of a saved checkpoint (safetensors files) is finite."""
    import torch
    from safetensors.torch import load_file

    files = sorted(Path(checkpoint).glob("*.safetensors"))
    bad, n = [], 0
    for f in files:
        for key, value in load_file(str(f)).items():
            n += value.numel()
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(key)
    return _result(f"{name}: finite weights", files and not bad,
                   {"checkpoint": str(checkpoint), "files": len(files), "values": n, "non_finite_tensors": bad[:10]})


def units_in_range(name: str, paths: Sequence[str | Path], n_units: int,
                   columns: Sequence[str] = ("units",)) -> Check:
    """Every unit id of every shard lies in [0, n_units) and no row is empty; durations are >= 1."""
    rows = tokens = 0
    problems = []
    for path in paths:
        table = pq.read_table(path)
        for column in columns:
            for seq in table.column(column).to_pylist():
                rows += 1
                tokens += len(seq)
                if not seq:
                    problems.append(f"{Path(path).name}: empty {column}")
                elif max(seq) >= n_units or min(seq) < 0:
                    problems.append(f"{Path(path).name}: {column} outside [0, {n_units}): {min(seq)}..{max(seq)}")
            dur_col = column.replace("units", "durations")
            if dur_col in table.column_names and any(d < 1 for s in table.column(dur_col).to_pylist() for d in s):
                problems.append(f"{Path(path).name}: a {dur_col} below 1")
    return _result(f"{name}: units in [0, {n_units})", paths and rows and not problems,
                   {"shards": len(paths), "sequences": rows, "tokens": tokens, "problems": problems[:10]})


def recorded(name: str, catalog: Any, paths: Sequence[str | Path]) -> Check:
    """Every output path is an artifact in the catalog and exists on disk."""
    known = {str(Path(a["path"]).resolve()) for a in catalog.artifacts()}
    missing = [str(p) for p in paths if str(Path(p).resolve()) not in known]
    absent = [str(p) for p in paths if not Path(p).exists()]
    return _result(f"{name}: outputs recorded in the catalog", paths and not missing and not absent,
                   {"outputs": len(paths), "not_recorded": missing[:10], "not_on_disk": absent[:10]})


def metrics_computed(catalog: Any, run: str, checkpoints: Sequence[str], rows: Sequence[str]) -> Check:
    """Every expected eval_results row exists for every checkpoint, with a finite value and no skip."""
    found = {(r["checkpoint"], r["metric"]): r for r in catalog.eval_results(run=run)}
    problems = []
    for ckpt in checkpoints:
        for metric in rows:
            row = found.get((ckpt, metric))
            details = json.loads((row or {}).get("details") or "{}")
            if row is None:
                problems.append(f"{metric} @ {Path(ckpt).name}: no result")
            elif "skipped" in details:
                problems.append(f"{metric} @ {Path(ckpt).name}: skipped ({details['skipped'][:160]})")
            elif row["value"] is None or not math.isfinite(row["value"]):
                problems.append(f"{metric} @ {Path(ckpt).name}: value {row['value']}")
    values = {f"{m} @ {Path(c).name}": found[(c, m)]["value"] for c in checkpoints for m in rows if (c, m) in found}
    return _result("evaluation: every metric computed", not problems,
                   {"expected": len(checkpoints) * len(rows), "problems": problems[:20], "values": values})


def audio_finite(name: str, paths: Sequence[str | Path], columns: Sequence[str]) -> Check:
    """Every synthesised utterance of the shards decodes to finite, non-silent samples."""
    from slam_core.audio.io import decode_audio_bytes

    n, problems = 0, []
    for path in paths:
        table = pq.read_table(path, columns=list(columns))
        for column in columns:
            for i, cell in enumerate(table.column(column).to_pylist()):
                data = cell.get("bytes") if isinstance(cell, dict) else cell
                wave = decode_audio_bytes(data, f"{path}:{i}/{column}")
                n += 1
                if not np.isfinite(wave).all() or float(np.abs(wave).max(initial=0.0)) == 0.0:
                    problems.append(f"{Path(path).name}:{i}/{column}")
    return _result(f"{name}: finite, non-silent audio", paths and n and not problems,
                   {"shards": len(paths), "utterances": n, "problems": problems[:10]})


def data_mix(sets: dict[str, dict[str, Any]], expected: Sequence[str]) -> Check:
    """prepare-data made unit shards with tokens for every expected `dataset/split` of the pre-training mix."""
    empty = [name for name in expected if not sets.get(name, {}).get("tokens")]
    return _result("pre-training mix: every set has units", not empty,
                   {"sets": {k: {f: v for f, v in s.items() if f in ("role", "shards", "tokens")} for k, s in sets.items()},
                    "missing_or_empty": empty})


def nothing_quarantined(catalog: Any) -> Check:
    """No input was quarantined: every rehearsal input is well formed, so a quarantine row is a bug."""
    rows = catalog.quarantined()
    return _result("no quarantined inputs", not rows,
                   {"quarantined": [(r["stage"], r["path"], r["reason"]) for r in rows][:10]})
