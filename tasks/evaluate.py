"""Evaluation tasks: published-set tokenisation, pair metrics, sampled continuations, GenPPL/auto-BLEU, the LLM
judge per checkpoint, and the HTML report.

A metric that cannot run (no vocoder, no eval sets, missing weights) is recorded in `eval_results` with value
NULL and `details.skipped` = the reason, naming what to provide; it never fails the flow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from data_catalog import Artifact, Catalog, produce_or_reuse
from slam_core.atomic import write_text_atomic
from slam_core.config import EvalConfig, UnitsConfig
from slam_core.discovery import data_root_checkpoint_digest
from slam_core.eval import generate, pairs, published, report
from tasks.common import CACHED, catalog_at

GENPPL_ROWS = ("genppl", "auto_bleu")


def accuracy_rows(catalog: Catalog, run: str) -> list[dict[str, Any]]:
    """The run's eval_results, pair metrics (those with an interval) also under `accuracy`, as reports expect."""
    return [row | {"accuracy": row["value"]} if row["ci_low"] is not None else row
            for row in catalog.eval_results(run=run)]


def skip_details(row: dict[str, Any]) -> dict[str, Any] | None:
    """The `details` of a skipped eval_results row, else None."""
    details = json.loads(row.get("details") or "{}")
    return details if "skipped" in details else None


def record_skip(data_root: str, run: str, checkpoint: str, metrics: tuple[str, ...] | list[str], reason: str,
                skip_fingerprint: str, retry: bool = False) -> dict[str, Any]:
    """Record metrics as skipped (value NULL) with the reason. `retry`: a missing artifact that may appear
    without a config change, so the scheduled evaluation tries again; otherwise the skip stands until the
    eval config (hence `skip_fingerprint`) changes."""
    catalog = catalog_at(data_root)
    for metric in metrics:
        catalog.record_eval(run, checkpoint, metric, None, 0, None, None,
                            details={"skipped": reason, "skip_fingerprint": skip_fingerprint, "retry": retry})
    print(f"skipped {', '.join(metrics)} for {checkpoint}: {reason}")
    return {"skipped": reason, "metrics": list(metrics), "checkpoint": checkpoint}


@task(name="tokenise-eval-set", retries=1, tags=["gpu"], **CACHED)
def tokenise_eval_set(reference_path: str, metric: str, set_name: str, centroids: str, units_cfg: UnitsConfig,
                      max_pairs: int | None, device: str, out_path: str, fingerprint: str,
                      data_root: str) -> dict[str, Any]:
    """One published set (or SALMon part) -> EVAL_PAIRS_UNITS through the units stage; cached by fingerprint,
    so every later checkpoint reuses the units."""
    def produce() -> dict[str, Any]:
        from slam_core.units import extract

        from slam_core.corpora.published_layout import published_sets

        sources = published_sets(reference_path, metric)[set_name][:max_pairs]
        extractor = extract.build_extractor(units_cfg, Path(data_root), centroids=Path(centroids), device=device)
        return published.tokenise_pairs(sources, set_name, extractor, units_cfg.batch_size, out_path)

    return produce_or_reuse(catalog_at(data_root), stage="pairs", dataset=set_name, split="eval", out_path=out_path,
                            fingerprint=fingerprint, produce=produce)


@task(name="tokenise-prompts", retries=1, tags=["gpu"], **CACHED)
def tokenise_prompts(kind: str, cfg: EvalConfig, use_alignment: bool, centroids: str, units_cfg: UnitsConfig,
                     device: str, out_path: str, fingerprint: str, data_root: str) -> dict[str, Any]:
    """Units of the prompt set `kind` (eval.genppl_prompts): each waveform cut at eval.prompt_s (or, with
    `use_alignment`, the nearest word end), then encoded (`slam_core.eval.prompts`)."""
    def produce() -> dict[str, Any]:
        from slam_core.eval import prompts
        from slam_core.units import extract

        sources = prompts.prompt_sources(kind, cfg, Path(data_root))
        extractor = extract.build_extractor(units_cfg, Path(data_root), centroids=Path(centroids), device=device)
        return prompts.tokenise_prompts(sources, extractor, units_cfg.batch_size, out_path, cfg.prompt_s,
                                        use_alignment)

    return produce_or_reuse(catalog_at(data_root), stage="pairs", dataset=f"prompts_{kind}", split="eval",
                            out_path=out_path, fingerprint=fingerprint, produce=produce)


@task(name="record-salmon-mean", **CACHED)
def record_salmon_mean(run: str, checkpoint: str, parts: list[str], fingerprint: str, data_root: str) -> dict[str, Any]:
    """SALMon's summary row: the mean of its part accuracies (each part is also a row)."""
    catalog = catalog_at(data_root)
    rows = {r["metric"]: r for r in catalog.eval_results(run=run, checkpoint=checkpoint)}
    scored = [{"accuracy": rows[p]["value"], "n": rows[p]["n"]} for p in parts
              if p in rows and rows[p]["value"] is not None]
    if not scored:
        return record_skip(data_root, run, checkpoint, ["salmon"], "no SALMon part could be scored", fingerprint)
    res = published.salmon_mean(scored)
    catalog.record_eval(run, checkpoint, "salmon", res["accuracy"], res["n"], res["ci_low"], res["ci_high"],
                        details={"fingerprint": fingerprint,
                                 "weights": data_root_checkpoint_digest(data_root, checkpoint), "parts": parts,
                                 "summary": "mean of part accuracies"})
    return res | {"metric": "salmon", "checkpoint": checkpoint}


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
                        details={"fingerprint": fingerprint,
                                 "weights": data_root_checkpoint_digest(data_root, checkpoint),
                                 "pairs_per_s": res["pairs_per_s"], "per_pair": res["per_pair"]})
    return {k: res[k] for k in ("accuracy", "n", "ci_low", "ci_high")} | {"metric": metric, "checkpoint": checkpoint}


@task(name="generate-continuations", retries=1, tags=["gpu"], **CACHED)
def generate_continuations(checkpoint: str, prompts: dict[str, str], cfg: EvalConfig, seed: int, device: str,
                           out_path: str, fingerprint: str, data_root: str) -> dict[str, Any]:
    """Sample continuations (T, top-k, repetition penalty, max new tokens from `cfg`; stop at EOS) of prompts cut
    at `cfg.prompt_s`: `prompts` = {"pairs": EVAL_PAIRS_UNITS path} (positive utterances, units cut) or
    {"units": `tokenise_prompts` Parquet} (waveforms already cut, units used whole)."""
    def produce() -> dict[str, Any]:
        sampling = dict(temperature=cfg.temperature, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
                        repetition_penalty=cfg.repetition_penalty, seed=seed, device=device,
                        batch_size=cfg.generation_batch_size)
        if "pairs" in prompts:
            rows = generate.generate_continuations(Path(checkpoint), Path(prompts["pairs"]), n_prompts=cfg.n_generate,
                                                   prompt_s=cfg.prompt_s, **sampling)
        else:
            import pyarrow.parquet as pq

            from slam_core.eval.prompts import prompts_from_rows

            units = pq.read_table(prompts["units"]).to_pylist()[: cfg.n_generate]
            rows = generate.generate_from_prompts(Path(checkpoint), prompts_from_rows(units), **sampling)
        generate.write_generations(rows, Path(out_path))
        return {"rows": len(rows), "tokens": sum(len(r["generated_units"]) for r in rows)}

    rec = produce_or_reuse(catalog_at(data_root), stage="eval", dataset="generations", split="heldout",
                           out_path=out_path, fingerprint=fingerprint, produce=produce)
    return {"path": out_path, "n": rec["rows"]}


def _load_vocoder_and_asr(cfg: EvalConfig, device: str) -> tuple[Any, Any]:
    from slam_core.eval.asr import load_asr
    from slam_core.eval.vocoder import load_vocoder, resolve_vocoder_files

    vocoder = load_vocoder(*resolve_vocoder_files(str(cfg.vocoder)), device=device)
    return vocoder, load_asr(cfg.asr_model, device=device)


def _missing_weights() -> tuple[type[Exception], ...]:
    from slam_core.eval.asr import AsrModelNotFoundError
    from slam_core.eval.vocoder import VocoderNotFoundError

    return (VocoderNotFoundError, AsrModelNotFoundError, pairs.CheckpointNotFoundError)


@task(name="genppl", tags=["gpu"], **CACHED)
def genppl_metric(run: str, checkpoint: str, generations_path: str, cfg: EvalConfig, device: str, out_dir: str,
                  fingerprint: str, data_root: str) -> dict[str, Any]:
    """GenPPL and auto-BLEU: vocode prompt + continuation, Whisper transcripts, perplexity under `cfg.ppl_lm`.
    Rows `genppl` (n = scored transcripts) and `auto_bleu` (a fraction over every transcript, empty ones 0, as
    SlamKit); empty transcripts counted in details, with `slamkit_difference` when GenPPL left them out."""
    from slam_core.eval import genppl as gp
    from slam_core.eval.text_metrics import load_ppl_lm

    try:
        vocoder, asr = _load_vocoder_and_asr(cfg, device)
        lm, tokenizer = load_ppl_lm(cfg.ppl_lm, device)
    except _missing_weights() as err:
        return record_skip(data_root, run, checkpoint, GENPPL_ROWS, str(err), fingerprint, retry=True)
    gens = json.loads(Path(generations_path).read_text())
    res = gp.evaluate_generation(gens, vocoder, asr, lm, tokenizer, out_dir, batch_size=cfg.batch_size,
                                 asr_max_tokens=cfg.asr_max_tokens, asr_language=cfg.asr_language,
                                 prepend_bos=cfg.genppl_bos == "prepend")
    details = {"fingerprint": fingerprint, "weights": data_root_checkpoint_digest(data_root, checkpoint),
               "n_samples": res["n_samples"], "n_empty": res["n_empty"],
               "note": res["note"], "slamkit_difference": res["slamkit_difference"],
               "result": str(Path(out_dir) / gp.RESULT_FILE), "asr_model": cfg.asr_model,
               "ppl_lm": cfg.ppl_lm}
    catalog = catalog_at(data_root)
    catalog.record_eval(run, checkpoint, "genppl", res["genppl"], res["n"], details=details)
    catalog.record_eval(run, checkpoint, "auto_bleu", res["auto_bleu"], res["n_samples"],
                        details=details | {"slamkit_difference": ""})
    return {k: res[k] for k in ("genppl", "auto_bleu", "n", "n_empty", "n_samples")} | {
        "checkpoint": checkpoint, "result": details["result"]}


@task(name="vocode-samples", tags=["gpu"], **CACHED)
def vocode_samples(generations_path: str, cfg: EvalConfig, device: str, out_dir: str, fingerprint: str,
                   data_root: str) -> dict[str, Any]:
    """WAVs of the report's samples (prompt + continuation) when a vocoder is set but GenPPL did not vocode
    them; writes `out_dir/samples.json` ({"rows": generations with "wav_path"}), the report's sample input."""
    def produce() -> dict[str, Any]:
        from slam_core.eval.genppl import vocode_generations
        from slam_core.eval.vocoder import load_vocoder, resolve_vocoder_files

        gens = json.loads(Path(generations_path).read_text())
        vocoder = load_vocoder(*resolve_vocoder_files(str(cfg.vocoder)), device=device)
        paths, _ = vocode_generations(gens, vocoder, out_dir, include_prompt=True)
        rows = [{**row, "wav_path": str(path)} for row, path in zip(gens, paths)]
        write_text_atomic(Path(out_dir) / "samples.json", json.dumps({"rows": rows}, indent=1) + "\n")
        return {"rows": len(rows)}

    produce_or_reuse(catalog_at(data_root), stage="eval", dataset="samples", split="heldout", out_path=out_dir,
                     fingerprint=fingerprint, produce=produce)
    return {"path": str(Path(out_dir) / "samples.json")}


def build_judge(cfg: EvalConfig, device: str) -> Any:
    """The configured judge: an OpenAI-compatible endpoint (key from the named env var) or a local HF LM."""
    from slam_core.eval import judge

    if cfg.judge_endpoint:
        return judge.EndpointJudge(cfg.judge_endpoint, cfg.judge_model or "", api_key_env=cfg.judge_api_key_env,
                                   allow_insecure=cfg.judge_allow_insecure)
    return judge.load_local_judge(str(cfg.judge_model), device=device)


@task(name="judge", tags=["gpu"], **CACHED)
def judge_metric(run: str, checkpoint: str, generations_path: str, cfg: EvalConfig, device: str, out_dir: str,
                 fingerprint: str, data_root: str) -> dict[str, Any]:
    """GPTScore: the judge's 1-5 rating of prompt/continuation transcripts, as SlamKit's llm_as_judge
    (`slam_core.eval.judge`); prompts from files shorter than `cfg.judge_min_file_s` left out, unparsable and
    failed answers counted."""
    from slam_core.eval import judge

    gens = json.loads(Path(generations_path).read_text())
    if gens and not judge.judged_rows(gens, cfg.judge_min_file_s)[0]:
        return record_skip(data_root, run, checkpoint, ["judge"], f"no prompt is cut from a file of at least "
                           f"{cfg.judge_min_file_s} s (eval.judge_min_file_s; SlamKit min_file_length)", fingerprint)
    try:
        vocoder, asr = _load_vocoder_and_asr(cfg, device)
        rater = build_judge(cfg, device)
    except (*_missing_weights(), ValueError) as err:  # ValueError: endpoint/API-key settings
        return record_skip(data_root, run, checkpoint, ["judge"], str(err), fingerprint, retry=True)
    gens = judge.with_source_audio(gens, cfg.genppl_prompts, cfg, data_root)  # prompts transcribed from their audio
    res = judge.judge_generations(gens, vocoder, asr, rater, out_dir, asr_max_tokens=cfg.asr_max_tokens,
                                  asr_language=cfg.asr_language, min_file_s=cfg.judge_min_file_s)
    write_text_atomic(Path(out_dir) / "judge.json", json.dumps(res, indent=1) + "\n")
    counts = ("n", "n_unparsable", "n_failed", "n_out_of_range", "n_short", "n_length_unknown", "prompt_audio")
    catalog_at(data_root).record_eval(
        run, checkpoint, "judge", res["mean_score"], res["n_parsed"],
        details={"fingerprint": fingerprint, "weights": data_root_checkpoint_digest(data_root, checkpoint),
                 **{k: res[k] for k in counts}, "min_file_s": cfg.judge_min_file_s,
                 "judge": cfg.judge_endpoint or cfg.judge_model})
    return {k: res[k] for k in ("mean_score", "n", "n_parsed", "n_unparsable", "n_failed", "n_short")} | {
        "checkpoint": checkpoint}


@task(name="write-report", **CACHED)
def write_report(run: str, out_html: str, metrics_csv: str | None, generations_path: str | None, config: dict,
                 fingerprint: str, data_root: str, audio_note: str | None = None,
                 dpo_metrics_csv: str | None = None) -> dict[str, Any]:
    """HTML report (training curves, metrics beside the paper, samples with audio players when vocoded); the
    flow that started the run publishes it (tasks/artifacts.py). `generations_path`: a generations JSON, or a
    genppl.json (rows with WAVs)."""
    rows = accuracy_rows(catalog_at(data_root), run)
    gens = json.loads(Path(generations_path).read_text()) if generations_path else None
    gens = gens["rows"] if isinstance(gens, dict) else gens
    path = report.write_report(Path(out_html), run, Path(metrics_csv) if metrics_csv else None, rows, gens, config,
                               paper_reference=report.PAPER_TABLE2["Slam"], audio_note=audio_note,
                               dpo_metrics_csv=Path(dpo_metrics_csv) if dpo_metrics_csv else None,
                               data_notes=data_notes(config, data_root))
    catalog_at(data_root).record_artifact(Artifact("reports", run, "all", str(path), fingerprint, rows=len(rows)))
    return {"report": str(path)}


def data_notes(config: dict, data_root: str) -> list[str]:
    """The report's lines on the data the run read: the SpokenSwag DPO pairs kept and dropped by the repetition
    filter (`corpus.spokenswag_dir`, relative to the data root unless absolute)."""
    from slam_core.synth.spokenswag import repetition_filter_note

    corpus = config.get("corpus") or {}
    if not corpus.get("spokenswag_dir"):
        return []
    shard_dir = Path(corpus["spokenswag_dir"]).expanduser()
    shard_dir = shard_dir if shard_dir.is_absolute() else Path(data_root) / shard_dir
    note = repetition_filter_note(catalog_at(data_root), shard_dir, corpus.get("swag_max_auto_bleu", 0.3))
    return [note] if note else []
