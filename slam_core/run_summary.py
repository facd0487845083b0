"""What a run did, in rows a person reads: checkpoint names, one metric row per checkpoint × metric, and one
summary row per stage (hours, segments, tokens, steps, final losses, tokens/s, MFU, shards reused and redone).

Shared by the Prefect artifacts of the reproduction flow (tasks/artifacts.py) and the report; no Prefect here.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The built-in pair sets are stand-ins for the paper's sets, not comparable with them (docs/offline-standins.md).
PROXY_METRICS = {"tsc_like": "tSC", "ssc_like": "sSC"}  # proxy -> the paper's metric it stands in for
REPORT_PORT_ENV = "SLAM_REPORT_PORT"
DEFAULT_REPORT_PORT = 8765


def checkpoint_label(path: str | Path) -> str:
    """A short, readable name of a checkpoint: `pretrain step 460 (1a2b3c)` for a training run's step
    directory (`<stage>-<fingerprint>/checkpoints/step-N`), else the directory name."""
    path = Path(path)
    step = re.fullmatch(r"step-(\d+)", path.name)
    if step and path.parent.name == "checkpoints":
        run_dir = path.parent.parent.name
        stage, _, digest = run_dir.partition("-")
        return f"{stage} step {int(step.group(1))}" + (f" ({digest[:6]})" if digest else "")
    return path.name


def metric_rows(eval_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per checkpoint × metric, the checkpoint named, proxies and skips explained in `note`."""
    out = []
    for r in sorted(eval_rows, key=lambda r: (str(r.get("checkpoint")), str(r.get("metric")))):
        details = json.loads(r.get("details") or "{}") if isinstance(r.get("details"), str) else (r.get("details") or {})
        notes = [details["skipped"]] if details.get("skipped") else []
        if r.get("metric") in PROXY_METRICS:
            notes.append(f"proxy of {PROXY_METRICS[str(r['metric'])]} (built-in pairs, not the paper's set)")
        if details.get("slamkit_difference"):
            notes.append(details["slamkit_difference"])
        out.append({"checkpoint": checkpoint_label(r["checkpoint"]), "metric": r["metric"],
                    "value": _round(r.get("value")), "ci_low": _round(r.get("ci_low")),
                    "ci_high": _round(r.get("ci_high")), "n": r.get("n"), "note": "; ".join(notes),
                    "path": str(r["checkpoint"])})
    return out


def read_metrics_csv(path: str | Path | None) -> list[dict[str, float]]:
    """Rows of a training metrics.csv keyed by header name, keeping only numeric cells (blank and other cells
    dropped); [] when there is no file. The report draws from the same rows."""
    if not path or not Path(path).is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row = {}
            for name, cell in raw.items():
                try:
                    row[name] = float(cell)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


def training_summary(metrics_csv: str | Path | None) -> dict[str, Any]:
    """Steps, tokens, final train loss, final validation loss, mean tokens/s and mean MFU of a training run."""
    rows = read_metrics_csv(metrics_csv)
    train = [r for r in rows if r.get("loss") is not None]
    if not train:
        return {}
    last = train[-1]
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    speeds = [r["tokens_per_s"] for r in train if r.get("tokens_per_s")]
    mfus = [r["mfu"] for r in train if r.get("mfu") is not None]
    return {"steps": int(last["step"] or 0), "tokens": int(last["tokens_seen"]) if last.get("tokens_seen") else None,
            "final_loss": last["loss"], "val_loss": val[-1] if val else None,
            "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
            "mfu": sum(mfus) / len(mfus) if mfus else None, "elapsed_s": last.get("elapsed_s")}


def shard_text(tally: dict[str, dict[str, int]]) -> str:
    """'units 4 reused, 0 redone; VAD 3 reused, 1 redone' from {what: {"reused", "redone"}}."""
    return "; ".join(f"{what} {n['reused']} reused, {n['redone']} redone" for what, n in tally.items())


def stage_rows(prepared: dict[str, Any], trained: dict[str, Any], evaluated: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage of a reproduction: data, pre-training, DPO (when run), evaluation."""
    shards = prepared.get("shards", {})
    rows = [{"stage": "data", "hours": _round(prepared.get("audio_hours"), 3), "segments": prepared.get("segments"),
             "tokens": prepared.get("tokens"), "steps": None, "final_loss": None, "val_loss": None,
             "tokens_per_s": None, "mfu": None, "shards": shard_text(shards)}]
    for stage, key in (("pre-training", "pretrain"), ("DPO", "dpo")):
        if key not in trained:
            continue
        info = trained[key]
        summary = training_summary(Path(info["run_dir"]) / "metrics.csv")
        reused = info.get("reused") or info.get("cached")
        rows.append({"stage": stage, "hours": _round((summary.get("elapsed_s") or 0) / 3600, 4),
                     "segments": None, "tokens": summary.get("tokens"), "steps": summary.get("steps"),
                     "final_loss": _round(summary.get("final_loss")), "val_loss": _round(summary.get("val_loss")),
                     "tokens_per_s": _round(summary.get("tokens_per_s"), 1), "mfu": _round(summary.get("mfu")),
                     "shards": "reused (recorded run)" if reused else "trained now"})
    rows.append({"stage": "evaluation", "hours": None, "segments": None, "tokens": None, "steps": None,
                 "final_loss": None, "val_loss": None, "tokens_per_s": None, "mfu": None,
                 "shards": f"{evaluated.get('computed', 0)} result(s) computed now"})
    return rows


def root_tag(data_root: str | Path) -> str:
    """A data root's name in report URLs: its folder name and 8 hex digits of its resolved path's sha256, so two
    roots (even two folders both named `slam-data`) never share a URL."""
    import hashlib

    path = Path(data_root).expanduser().resolve()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.name).strip("-.") or "root"
    return f"{name[:40]}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def report_port(port: int | None = None) -> int:
    """The port of `slam report serve`: `port`, else $SLAM_REPORT_PORT, else 8765."""
    import os

    return port or int(os.environ.get(REPORT_PORT_ENV) or DEFAULT_REPORT_PORT)


def report_url(run: str, data_root: str | Path, port: int | None = None) -> str:
    """Where `slam report serve --data-root <data_root>` shows a run's report: one URL per data root and run
    (`http://127.0.0.1:PORT/<root tag>/<run>/index.html`), so a link never opens another root's report."""
    from urllib.parse import quote

    return f"http://127.0.0.1:{report_port(port)}/{root_tag(data_root)}/{quote(run)}/index.html"


def _round(value: Any, digits: int = 4) -> Any:
    return round(float(value), digits) if isinstance(value, (int, float)) and value is not None else value
