"""evaluate: score checkpoints on every configured metric, record results, refresh the report.

Metrics (eval.metrics): tsc_like, ssc_like (built-in spoken pairs); sblimp, swuggy (inter + oov), ssc, tsc,
salmon (every part + mean) read from eval.reference_path and tokenised once by the units stage (cached by
fingerprint); generate (samples for the report); genppl (+ auto_bleu) and judge (need a vocoder, Whisper and an
LM/judge). A metric that cannot run is recorded as skipped with the reason, never crashes the run.

With `checkpoints=None` (the scheduled deployment) it finds every checkpoint of the run that lacks a result
for some configured metric and evaluates only those: a rerun with nothing new does nothing.
Run: `python -m flows.evaluate --preset smoke` or `prefect deployment run 'evaluate/nightly-eval'`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import flow

from flows.common import device_name, fp, load_config, save_resolved
from flows.entry import user_facing
from flows.prepare_data import prepare_data
from slam_core.config import SlamConfig
from slam_core.discovery import (
    data_root_checkpoint_digest, find_checkpoints, newest_metrics_csv, split_usable_checkpoints,
)
from slam_core.device import set_cpu_threads
from slam_core.corpora.published_layout import PUBLISHED_METRICS, published_sets, set_file_name
from slam_core.eval.published import sources_digest
from slam_core.fingerprint import code_version
from slam_core.inputs import check_inputs
from slam_core.paths import stage_dir
from tasks import evaluate as ev
from tasks.artifacts import publish_run_story
from tasks.common import catalog_at

PAIR_METRICS = ("tsc_like", "ssc_like")
GENERATIVE_METRICS = {"genppl": ev.GENPPL_ROWS, "judge": ("judge",)}
KNOWN_METRICS = (*PAIR_METRICS, *PUBLISHED_METRICS, "generate", *GENERATIVE_METRICS)


@flow(name="evaluate", log_prints=True)
@user_facing
def evaluate(preset: str = "smoke", overrides: dict[str, Any] | None = None, data_root: str | None = None,
             checkpoints: list[str] | None = None, prepared: dict[str, Any] | None = None,
             metrics_csv: str | None = None) -> dict[str, Any]:
    """Evaluate the given checkpoints (or every unevaluated one of the run) and write the report."""
    cfg = load_config(preset, overrides, data_root)
    check_inputs(cfg, ("eval",))  # missing evaluation inputs stop here, unless eval.allow_skip
    save_resolved(cfg, "evaluate")
    root, dev, run, metrics = str(cfg.data_root), device_name(cfg), cfg.run.name, list(cfg.eval.metrics)
    unknown = sorted(set(metrics) - set(KNOWN_METRICS))
    if unknown:
        raise ValueError(f"eval.metrics: unknown {unknown} (known: {', '.join(KNOWN_METRICS)})")
    prepared = prepared or prepare_data(preset, overrides, root)
    if dev == "cpu":
        set_cpu_threads(1)  # one model at a time from here on: use every core

    # 1. Which checkpoints need work: those without a (current) result for some configured metric.
    targets = checkpoints or [str(p) for p in find_checkpoints(stage_dir(cfg.data_root, "checkpoints", run))]
    targets, rejected = split_usable_checkpoints(targets, cfg.vocab_size)  # a bad one never stops the others
    for checkpoint, reason in rejected:
        print(f"not evaluated: {reason}")
    catalog = catalog_at(root)
    rows = {(r["checkpoint"], r["metric"]): r for r in catalog.eval_results(run=run)}
    skip_fp = fp("eval", cfg, ("eval",), "skip")

    weights = {c: _weights_digest(cfg, c) for c in targets}

    def needed(metric_rows: tuple[str, ...] | list[str]) -> list[str]:
        return [c for c in targets if not all(_done(rows.get((c, m)), skip_fp, weights[c]) for m in metric_rows)]

    result_rows = sorted(_result_metrics(cfg, list(rows.values())) - {"generate"})
    pending = needed(result_rows)
    print(f"{len(targets)} checkpoint(s) found; "
          + (f"new work for {len(pending)}: {', '.join(Path(c).name for c in pending)}" if pending
             else "nothing new to evaluate"))

    # 2. Built-in pair metrics (tSC-like, sSC-like).
    todo = [(c, m) for m in metrics if m in PAIR_METRICS for c in needed([m])]
    print(f"{len(targets)} checkpoint(s), {len(todo)} built-in pair metric(s) to compute")
    computed = [ev.score_pairs(run, c, m, prepared["pairs"][m], cfg.eval, dev,
                               fp("eval", cfg, ("eval",), prepared["pair_fingerprints"][m], _result_key(cfg, c),
                                  metric=m), root) for c, m in todo]

    # 3. Published sets: tokenised once per set (cached), scored per checkpoint.
    for metric in (m for m in metrics if m in PUBLISHED_METRICS):
        computed += _published_metric(cfg, metric, prepared, needed, dev, root)

    # 4. Samples: the newest checkpoint (report), and every checkpoint that needs genppl/judge.
    gen_paths: dict[str, str] = {}
    gen_for = set(targets[-1:]) if "generate" in metrics and cfg.eval.n_generate > 0 else set()
    runnable: dict[str, list[str]] = {}  # generative metric -> checkpoints it will be computed for
    for metric, metric_rows in GENERATIVE_METRICS.items():
        if metric in metrics:
            waiting = needed(metric_rows)
            reason, retry = _preflight(cfg, metric)
            if reason:
                computed += [ev.record_skip(root, run, c, metric_rows, reason, skip_fp, retry) for c in waiting]
            else:
                runnable[metric] = waiting
                gen_for |= set(waiting) if metric == "genppl" else set()
    for c in (c for c in targets if c in gen_for):
        gen_paths[c] = _generate(cfg, c, prepared, dev, root, cfg.eval.genppl_use_alignment)
    # SlamKit cuts the judge's prompts at word ends (use_alignment) and GenPPL's at prompt_s: two sets of samples
    # where the settings differ, one (cached) where they agree
    judge_paths = {c: _generate(cfg, c, prepared, dev, root, cfg.eval.use_alignment) for c in runnable.get("judge", [])}
    for metric, task_fn, paths in (("genppl", ev.genppl_metric, gen_paths), ("judge", ev.judge_metric, judge_paths)):
        for c in runnable.get(metric, []):
            out_dir = stage_dir(cfg.data_root, "eval", run, metric, _short(c + paths[c]))
            gen_fp = fp("generate", cfg, ("eval",), Path(paths[c]).stem, _result_key(cfg, c), metric=metric,
                        code=code_version(("eval",)))
            computed.append(task_fn(run, c, paths[c], cfg.eval, dev, str(out_dir), gen_fp, root))

    # 5. Results of this call's checkpoints and configured metrics, then the report.
    all_rows = ev.accuracy_rows(catalog, run)
    wanted_metrics = _result_metrics(cfg, all_rows)
    results = [{k: r[k] for k in ("checkpoint", "metric", "accuracy", "n", "ci_low", "ci_high")}
               for r in all_rows if r["checkpoint"] in targets and r["metric"] in wanted_metrics and "accuracy" in r]
    other = [{"checkpoint": r["checkpoint"], "metric": r["metric"], "value": r["value"], "n": r["n"],
              "note": (ev.skip_details(r) or {}).get("skipped", "")}
             for r in all_rows if r["checkpoint"] in targets and r["metric"] in wanted_metrics and "accuracy" not in r]
    newest = targets[-1] if targets else None
    samples, audio_note = _report_samples(cfg, newest, gen_paths, catalog, run)
    ckpt_root = stage_dir(cfg.data_root, "checkpoints", run)
    metrics_csv = metrics_csv or str(newest_metrics_csv(ckpt_root, "pretrain") or "") or None
    dpo_csv = str(newest_metrics_csv(ckpt_root, "dpo") or "") or None
    report_fp = fp("report", cfg, ("eval",), *sorted(f"{r['checkpoint']}|{r['metric']}|{r['value']}|{r['created_at']}"
                                                     for r in all_rows), str(samples), str(metrics_csv),
                   str(dpo_csv), *(_stamp(p) for p in (metrics_csv, dpo_csv)))
    out_html = str(stage_dir(cfg.data_root, "reports", run) / "index.html")
    rep = ev.write_report(run, out_html, metrics_csv, samples, cfg.resolve(), report_fp, root, audio_note, dpo_csv)
    if _started_by_user():  # inside a reproduction, the reproduction's own run carries the story
        publish_run_story(run, root, rep["report"])
    return {"results": results, "other": other, "computed": len(computed),
            "generations": gen_paths.get(newest) if newest else None, "report": rep["report"],
            "rejected": [{"checkpoint": c, "reason": r} for c, r in rejected]}


def _stamp(path: str | None) -> str:
    """Size and mtime of a file the report draws (a resumed training appends to its metrics.csv)."""
    if not path or not Path(path).is_file():
        return ""
    st = Path(path).stat()
    return f"{st.st_size}|{st.st_mtime_ns}"


def _started_by_user() -> bool:
    """This flow run is the one the user (or the schedule) started, not a subflow of a reproduction."""
    from prefect.runtime import flow_run

    return flow_run.parent_flow_run_id is None


def _done(row: dict[str, Any] | None, skip_fp: str, weights: str) -> bool:
    """A result of these weights exists (rewritten weights are evaluated again); a skip counts only while the eval
    config is unchanged and it is not a retryable one."""
    if row is None or json.loads(row.get("details") or "{}").get("weights", weights) != weights:
        return False
    skipped = ev.skip_details(row)
    return skipped is None or (not skipped.get("retry") and skipped.get("skip_fingerprint") == skip_fp)


def _weights_digest(cfg: SlamConfig, checkpoint: str) -> str:
    """Content digest of a checkpoint (file hashes cached under the data root for later polls)."""
    return data_root_checkpoint_digest(cfg.data_root, checkpoint)


def _result_key(cfg: SlamConfig, checkpoint: str) -> str:
    """Fingerprint input of a task that records a result row for `checkpoint`: its weights and its path. Rows are
    kept per path, so a copy of a checkpoint must not be served the other path's cached task result."""
    return f"{_weights_digest(cfg, checkpoint)}|{Path(checkpoint).resolve()}"


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _published_metric(cfg: SlamConfig, metric: str, prepared: dict[str, Any], needed: Any, dev: str,
                      root: str) -> list[dict[str, Any]]:
    """Tokenise (cached) and score one configured published metric; skipped rows name what is missing."""
    run, skip_fp = cfg.run.name, fp("eval", cfg, ("eval",), "skip")
    if not cfg.eval.reference_path:
        reason = (f"eval.reference_path is not set: put the published sets there in SlamKit's layout "
                  f"(sblimp/, swuggy_inter/, swuggy_oov/, sSC/, tSC/, salmon/<part>/) to compute {metric}")
        return [ev.record_skip(root, run, c, [metric], reason, skip_fp) for c in needed([metric])]
    try:
        sets = published_sets(cfg.eval.reference_path, metric)
    except (FileNotFoundError, ValueError) as err:
        return [ev.record_skip(root, run, c, [metric], str(err), skip_fp) for c in needed([metric])]
    summary_rows = [*sets, "salmon"] if metric == "salmon" else list(sets)
    waiting = needed(summary_rows)
    if not waiting:
        return []
    centroids = _centroids(cfg, prepared, root)
    km_digest = _file_digest(centroids)
    out: list[dict[str, Any]] = []
    for set_name, sources in sets.items():
        tok_fp = fp("pair-units", cfg, ("units",), km_digest, sources_digest(sources), eval_set=set_name,
                    max_pairs=cfg.eval.max_pairs, code=code_version(("eval/published.py", "corpora/published_layout.py")))
        path = str(stage_dir(cfg.data_root, "pairs", "published") / f"{set_file_name(set_name)}-{tok_fp}.parquet")
        tok = ev.tokenise_eval_set(str(cfg.eval.reference_path), metric, set_name, centroids, cfg.units,
                                   cfg.eval.max_pairs, dev, path, tok_fp, root)
        for c in needed([set_name]):
            if tok["rows"] == 0:
                out.append(ev.record_skip(root, run, c, [set_name], f"{set_name}: no pair could be tokenised "
                                          "(see the catalog's quarantine)", skip_fp, retry=True))
                continue
            score_fp = fp("eval", cfg, ("eval",), tok_fp, _result_key(cfg, c), metric=set_name)
            out.append(ev.score_pairs(run, c, set_name, path, cfg.eval, dev, score_fp, root))
    if metric == "salmon":
        for c in waiting:
            mean_fp = fp("eval", cfg, ("eval",), _result_key(cfg, c), *sorted(sets), metric="salmon")
            out.append(ev.record_salmon_mean(cfg.run.name, c, sorted(sets), mean_fp, root))
    return out


def _centroids(cfg: SlamConfig, prepared: dict[str, Any], root: str) -> str:
    """The k-means centroids the run's units were made with: from prepare-data's result, else the catalog's
    newest k-means artifact, else units.kmeans_path."""
    if prepared.get("centroids"):
        return str(prepared["centroids"])
    fitted = [a for a in catalog_at(root).artifacts(stage="units") if a["dataset"] == "kmeans" and Path(a["path"]).is_file()]
    if fitted:
        return str(max(fitted, key=lambda a: a["created_at"])["path"])
    if cfg.kmeans_file:
        return str(cfg.kmeans_file)
    raise FileNotFoundError(f"no k-means centroids under {root}: run prepare-data first or set units.kmeans_path")


def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _preflight(cfg: SlamConfig, metric: str) -> tuple[str | None, bool]:
    """(why genppl/judge cannot run, whether to retry later), checked before sampling anything: no vocoder or
    judge configured (stands until the config changes), or vocoder files missing (retried)."""
    from slam_core.eval.vocoder import VocoderNotFoundError, resolve_vocoder_files

    if not cfg.eval.vocoder:
        return ("no vocoder configured (eval.vocoder): download hifigan_lj_mhubert_base_25hz.pt and its config "
                "JSON (textlesslib) and set eval.vocoder to their directory", False)
    if metric == "judge" and not (cfg.eval.judge_model or cfg.eval.judge_endpoint):
        return "no judge configured: set eval.judge_model (local HF LM) or eval.judge_endpoint + eval.judge_model", False
    try:
        resolve_vocoder_files(cfg.eval.vocoder)
    except VocoderNotFoundError as err:
        return str(err), True
    return None, False


def _generate(cfg: SlamConfig, checkpoint: str, prepared: dict[str, Any], dev: str, root: str,
              use_alignment: bool) -> str:
    """Sampled continuations of one checkpoint (cached by fingerprint); returns the generations JSON path.
    `use_alignment`: file prompts end at the word end closest to eval.prompt_s where an alignment exists."""
    run = cfg.run.name
    kind = cfg.eval.genppl_prompts
    if kind != "tsc_like":
        from slam_core.eval import prompts as prompt_sets

        centroids = _centroids(cfg, prepared, root)
        sources = prompt_sets.prompt_sources(kind, cfg.eval, cfg.data_root)
        # each audio's bytes and its alignment JSON decide the cut and the units: they are in the key
        prompt_fp = fp("pair-units", cfg, ("units",), _file_digest(centroids), *prompt_sets.stamp(sources),
                       eval_set=f"prompts_{kind}", prompt_s=cfg.eval.prompt_s, use_alignment=use_alignment,
                       code=code_version(("eval/prompts.py", "eval/generate.py")))
        units_path = str(stage_dir(cfg.data_root, "pairs", "published") / f"prompts_{kind}-{prompt_fp}.parquet")
        ev.tokenise_prompts(kind, cfg.eval, use_alignment, centroids, cfg.units, dev, units_path, prompt_fp, root)
        prompts, upstream = {"units": units_path}, prompt_fp
    else:
        prompts, upstream = {"pairs": prepared["pairs"]["tsc_like"]}, prepared["pair_fingerprints"]["tsc_like"]
    gen_fp = fp("generate", cfg, ("eval",), upstream, _weights_digest(cfg, checkpoint))  # copies share samples
    gen_path = str(stage_dir(cfg.data_root, "eval", run) / f"generations-{gen_fp}.json")
    return ev.generate_continuations(checkpoint, prompts, cfg.eval, cfg.run.seed, dev, gen_path, gen_fp, root)["path"]


def _result_metrics(cfg: SlamConfig, rows: list[dict[str, Any]]) -> set[str]:
    """eval_results metric names the configured metrics produce (salmon parts found in the rows)."""
    names: set[str] = set()
    for m in cfg.eval.metrics:
        names |= set(PUBLISHED_METRICS.get(m, ())) | set(GENERATIVE_METRICS.get(m, ())) | {m}
        if m == "salmon":
            names |= {r["metric"] for r in rows if str(r["metric"]).startswith("salmon/")}
    return names


def _report_samples(cfg: SlamConfig, newest: str | None, gen_paths: dict[str, str], catalog: Any,
                    run: str) -> tuple[str | None, str | None]:
    """What the report shows as samples: the newest checkpoint's vocoded GenPPL rows (audio + transcript) when
    they exist, else its unit sequences with a note that nothing was vocoded."""
    if newest is None:
        return None, None
    row = next((r for r in catalog.eval_results(run=run, checkpoint=newest) if r["metric"] == "genppl"), None)
    result = json.loads(row["details"] or "{}").get("result") if row else None
    if result and Path(result).is_file():
        return result, None
    gens = gen_paths.get(newest)
    if not cfg.eval.vocoder:
        return gens, "no vocoder configured (eval.vocoder): unit sequences only, no audio"
    if not gens:
        return None, None
    from slam_core.eval.vocoder import VocoderNotFoundError, resolve_vocoder_files

    try:  # a vocoder is set: the samples get audio players even when GenPPL is not computed
        resolve_vocoder_files(cfg.eval.vocoder)
    except VocoderNotFoundError as err:
        return gens, f"not vocoded: {err}"
    voc_fp = fp("generate", cfg, ("eval",), Path(gens).stem, "vocode-samples", code=code_version(("eval",)))
    out_dir = stage_dir(cfg.data_root, "eval", run, "samples", voc_fp)
    return ev.vocode_samples(gens, cfg.eval, device_name(cfg), str(out_dir), voc_fp, str(cfg.data_root))["path"], None


if __name__ == "__main__":
    from flows.common import run_from_command_line

    run_from_command_line(evaluate, __doc__)
