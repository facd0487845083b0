"""evaluate: score checkpoints on every configured metric, record results, refresh the report.

With `checkpoints=None` (the scheduled deployment) it finds every checkpoint of the run that lacks a result
for some configured metric and evaluates only those: a rerun with nothing new does nothing.
Run: `python -m flows.evaluate --preset smoke` or `prefect deployment run 'evaluate/nightly-eval'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.common import device_name, fp, load_config, save_resolved
from flows.prepare_data import prepare_data
from slam_core.discovery import checkpoint_digest, find_checkpoints, newest_metrics_csv
from slam_core.device import set_cpu_threads
from slam_core.paths import stage_dir
from tasks import evaluate as ev
from tasks.common import catalog_at

PAIR_METRICS = ("tsc_like", "ssc_like")


@flow(name="evaluate", log_prints=True)
def evaluate(preset: str = "smoke", overrides: dict[str, Any] | None = None, data_root: str | None = None,
             checkpoints: list[str] | None = None, prepared: dict[str, Any] | None = None,
             metrics_csv: str | None = None) -> dict[str, Any]:
    """Evaluate the given checkpoints (or every unevaluated one of the run) and write the report."""
    cfg = load_config(preset, overrides, data_root)
    save_resolved(cfg, "evaluate")
    root, seed, dev, run = str(cfg.data_root), cfg.run.seed, device_name(cfg), cfg.run.name
    unknown = set(cfg.eval.metrics) - set(PAIR_METRICS) - {"generate"}
    if unknown:
        raise ValueError(f"eval.metrics: {sorted(unknown)} need the published eval sets, not available in this flow")
    prepared = prepared or prepare_data(preset, overrides, root)
    if dev == "cpu":
        set_cpu_threads(1)  # one model at a time from here on: use every core

    # 1. Which checkpoints need work: those without a result for some configured metric.
    targets = checkpoints or [str(p) for p in find_checkpoints(stage_dir(cfg.data_root, "checkpoints", run))]
    catalog = catalog_at(root)
    done = {(r["checkpoint"], r["metric"]) for r in catalog.eval_results(run=run)}
    todo = [(c, m) for c in targets for m in cfg.eval.metrics if m in PAIR_METRICS and (c, m) not in done]
    print(f"{len(targets)} checkpoint(s), {len(todo)} pair metric(s) to compute")

    # 2. Pair-likelihood metrics (tSC-like, sSC-like), each recorded in eval_results.
    computed = [ev.score_pairs(run, c, m, prepared["pairs"][m], cfg.eval, dev,
                               fp("eval", cfg, ("eval",), prepared["pair_fingerprints"][m], checkpoint_digest(c),
                                  metric=m), root) for c, m in todo]
    wanted = {(c, m) for c in targets for m in cfg.eval.metrics if m in PAIR_METRICS}
    results = [{k: r[k] for k in ("checkpoint", "metric", "accuracy", "n", "ci_low", "ci_high")}
               for r in ev.accuracy_rows(catalog, run) if (r["checkpoint"], r["metric"]) in wanted]

    # 3. Sampled continuations of the newest checkpoint.
    generations = None
    if "generate" in cfg.eval.metrics and targets and cfg.eval.n_generate > 0:
        newest = targets[-1]
        gen_fp = fp("generate", cfg, ("eval",), prepared["pair_fingerprints"]["tsc_like"], checkpoint_digest(newest))
        gen_path = str(stage_dir(cfg.data_root, "eval", run) / f"generations-{gen_fp}.json")
        generations = ev.generate_continuations(newest, prepared["pairs"]["tsc_like"], cfg.eval, seed, dev, gen_path,
                                                gen_fp, root)["path"]

    # 4. Report: loss curves, metrics beside the paper, samples.
    metrics_csv = metrics_csv or str(newest_metrics_csv(stage_dir(cfg.data_root, "checkpoints", run)) or "") or None
    report_fp = fp("report", cfg, ("eval",), *sorted(f"{r['checkpoint']}|{r['metric']}|{r['accuracy']}" for r in results),
                   str(generations), str(metrics_csv))
    out_html = str(stage_dir(cfg.data_root, "reports", run) / "index.html")
    rep = ev.write_report(run, out_html, metrics_csv, generations, cfg.resolve(), report_fp, root)
    return {"results": results, "computed": len(computed), "generations": generations, "report": rep["report"]}


if __name__ == "__main__":
    from flows.common import run_from_command_line

    run_from_command_line(evaluate, __doc__)
