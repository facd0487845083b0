"""The run's story as Prefect artifacts on the flow run the user started: the metrics table (one row per
checkpoint × metric, checkpoint named), the per-stage summary and a link to the HTML report served by
`slam report serve` (a browser will not open a file:// link from the UI).

Called from flow bodies (not tasks), so the artifacts belong to that flow run: the reproduction when the user
ran a reproduction, the evaluation when the scheduled evaluation ran on its own.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from slam_core import run_summary
from tasks.evaluate import accuracy_rows
from tasks.common import catalog_at

log = logging.getLogger(__name__)


def slug(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "run"


def publish_run_story(run: str, data_root: str, report_path: str | None,
                      stages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Metrics table, stage summary (when given) and report link on the current flow run; returns what was
    published (the table rows and the report URL)."""
    rows = run_summary.metric_rows(accuracy_rows(catalog_at(data_root), run))
    key = slug(run)
    create_table_artifact(key=f"{key}-metrics", table=rows,
                          description=f"Evaluation of run {run}: one row per checkpoint × metric. tsc_like and "
                                      "ssc_like are proxies on built-in pairs, not the paper's tSC/sSC.")
    if stages:
        create_table_artifact(key=f"{key}-stages", table=stages,
                              description=f"Run {run}, per stage: audio hours (training: wall-clock hours), "
                                          "segments, tokens, steps, final train/validation loss, mean tokens/s, "
                                          "mean MFU, shards reused and redone")
    url = None
    if report_path:
        url = run_summary.report_url(run, data_root)
        serve = f"slam report serve --data-root {data_root}"
        create_link_artifact(key=f"{key}-report", link=url, link_text=f"HTML report of {run} ({data_root})",
                             description=f"Served by `{serve}` (127.0.0.1 only); the file is {report_path}")
        create_markdown_artifact(
            key=f"{key}-summary",
            markdown=(f"**Report**: [{url}]({url}) — start `{serve}` (port ${run_summary.REPORT_PORT_ENV} or "
                      f"{run_summary.DEFAULT_REPORT_PORT}) to open it; the file itself is `{report_path}`.\n\n"
                      + _markdown(rows, stages)))
    return {"metrics": rows, "report_url": url}


def _markdown(rows: list[dict[str, Any]], stages: list[dict[str, Any]] | None) -> str:
    out = []
    if stages:
        out += ["| stage | hours | segments | tokens | steps | final loss | val loss | tokens/s | MFU | shards |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        out += [f"| {s['stage']} | {_f(s['hours'])} | {_f(s['segments'])} | {_f(s['tokens'])} | {_f(s['steps'])} | "
                f"{_f(s['final_loss'])} | {_f(s['val_loss'])} | {_f(s['tokens_per_s'])} | {_f(s['mfu'])} | "
                f"{s['shards']} |" for s in stages]
        out.append("")
    out += ["| checkpoint | metric | value | 95 % interval | n | note |", "|---|---|---:|---|---:|---|"]
    for r in rows:
        ci = f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]" if r["ci_low"] is not None else ""
        out.append(f"| {r['checkpoint']} | {r['metric']} | {_f(r['value'])} | {ci} | {_f(r['n'])} | {r['note']} |")
    return "\n".join(out) + "\n"


def _f(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)
