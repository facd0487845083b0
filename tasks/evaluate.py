"""Evaluation tasks: pair metrics and sampled continuations per checkpoint, and the HTML report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from data_catalog import Artifact, Catalog, produce_or_reuse
from slam_core.config import EvalConfig
from slam_core.eval import generate, pairs, report
from tasks.common import CACHED, catalog_at


def accuracy_rows(catalog: Catalog, run: str) -> list[dict[str, Any]]:
    """The run's eval_results, pair metrics (those with an interval) also under `accuracy`, as reports expect."""
    return [row | {"accuracy": row["value"]} if row["ci_low"] is not None else row
            for row in catalog.eval_results(run=run)]


@task(name="score-pairs", retries=1, tags=["gpu"], **CACHED)
def score_pairs(run: str, checkpoint: str, metric: str, pairs_path: str, cfg: EvalConfig, device: str,
                fingerprint: str, data_root: str) -> dict[str, Any]:
    """Pair-likelihood accuracy (ties 0.5) with a 95 % interval, recorded in `eval_results`."""
    res = pairs.evaluate_pairs(Path(checkpoint), Path(pairs_path), batch_size=cfg.batch_size, device=device)
    catalog = catalog_at(data_root)
    for item in res["skipped"]:
        catalog.record_quarantine("eval", metric, item.get("pair_id", "?"), item.get("reason", "unscorable"),
                                  item.get("detail", ""), fingerprint)
    catalog.record_eval(run, checkpoint, metric, res["accuracy"], res["n"], res["ci_low"], res["ci_high"],
                        details={"fingerprint": fingerprint, "pairs_per_s": res["pairs_per_s"],
                                 "per_pair": res["per_pair"]})
    return {k: res[k] for k in ("accuracy", "n", "ci_low", "ci_high")} | {"metric": metric, "checkpoint": checkpoint}


@task(name="generate-continuations", retries=1, tags=["gpu"], **CACHED)
def generate_continuations(checkpoint: str, pairs_path: str, cfg: EvalConfig, seed: int, device: str, out_path: str,
                           fingerprint: str, data_root: str) -> dict[str, Any]:
    """Sample continuations of 3 s prompts (T 0.8, top-k 25) and save them as JSON."""
    def produce() -> dict[str, Any]:
        rows = generate.generate_continuations(
            Path(checkpoint), Path(pairs_path), n_prompts=cfg.n_generate, prompt_s=cfg.prompt_s,
            temperature=cfg.temperature, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
            repetition_penalty=cfg.repetition_penalty, seed=seed, device=device)
        generate.write_generations(rows, Path(out_path))
        return {"rows": len(rows), "tokens": sum(len(r["generated_units"]) for r in rows)}

    rec = produce_or_reuse(catalog_at(data_root), stage="eval", dataset="generations", split="heldout",
                           out_path=out_path, fingerprint=fingerprint, produce=produce)
    return {"path": out_path, "n": rec["rows"]}


@task(name="write-report", **CACHED)
def write_report(run: str, out_html: str, metrics_csv: str | None, generations_path: str | None, config: dict,
                 fingerprint: str, data_root: str) -> dict[str, Any]:
    """HTML report (loss curve, metrics beside the paper, samples), also published as Prefect artifacts."""
    rows = accuracy_rows(catalog_at(data_root), run)
    gens = json.loads(Path(generations_path).read_text()) if generations_path else None
    path = report.write_report(Path(out_html), run, Path(metrics_csv) if metrics_csv else None, rows, gens, config,
                               paper_reference=report.PAPER_TABLE2["Slam"])
    catalog_at(data_root).record_artifact(Artifact("reports", run, "all", str(path), fingerprint, rows=len(rows)))
    table = [{k: r[k] for k in ("checkpoint", "metric", "value", "n", "ci_low", "ci_high")} for r in rows]
    create_table_artifact(key=f"{_slug(run)}-metrics", table=table, description=f"Evaluation of run {run}")
    create_markdown_artifact(key=f"{_slug(run)}-summary", markdown=report.markdown_summary(rows))
    create_link_artifact(key=f"{_slug(run)}-report", link=Path(path).resolve().as_uri(), link_text="HTML report")
    return {"report": str(path)}


def _slug(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "run"
