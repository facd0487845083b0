"""Interleaved-path tasks (thin: the work is `slam_core.lm.interleave_stage`): TWIST init keeping the text
vocabulary, token-docs shards, the cross-modal StoryCloze stand-in, its units, its scores in `eval_results`, and
cross-modal generation (speech prompt -> text, SlamKit's cm_generate). Each is cached by its fingerprint and
recorded in the catalog like every other stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from data_catalog import produce_or_reuse
from slam_core.config import EvalConfig, InterleaveConfig, ModelConfig, SynthConfig, UnitsConfig
from slam_core.discovery import data_root_checkpoint_digest
from slam_core.lm import interleave_stage as stage
from tasks.common import CACHED, catalog_at


@task(name="init-interleaved-lm", retries=1, **CACHED)
def init_interleaved_lm(model_cfg: ModelConfig, stories_path: str, text_vocab_size: int, n_units: int, seed: int,
                        out_dir: str, fingerprint: str, data_root: str) -> dict[str, Any]:
    """The base LM with its text rows kept and 500 unit + 2 marker rows added, saved with its tokenizer."""
    info: dict[str, Any] = {}

    def produce() -> dict[str, Any]:
        info.update(stage.init_lm(model_cfg, data_root, stories_path, text_vocab_size, n_units, seed, out_dir))
        return {"rows": info["n_params"]}

    rec = produce_or_reuse(catalog_at(data_root), stage="models", dataset="interleaved-lm", split="init",
                           out_path=out_dir, fingerprint=fingerprint, produce=produce)
    return {**rec, "n_params": rec["rows"]}


@task(name="token-docs", retries=1, **CACHED)
def token_docs(kind: str, inputs: dict[str, Any], out_path: str, init_dir: str, cfg: InterleaveConfig, seed: int,
               fingerprint: str, data_root: str) -> dict[str, Any]:
    """One TOKEN_DOCS shard of the mix (kind: interleaved, speech or text), recorded under stage 'tokens'."""
    return produce_or_reuse(catalog_at(data_root), stage="tokens", dataset=kind, split="train", out_path=out_path,
                            fingerprint=fingerprint,
                            produce=lambda: stage.write_docs(kind, inputs, out_path, init_dir, cfg, seed))


@task(name="cross-modal-stand-in", retries=1, tags=["tts"], **CACHED)
def cross_modal_stand_in(stories_path: str, synth_cfg: SynthConfig, seed: int, out_dir: str,
                         max_items: int | None, fingerprint: str, data_root: str) -> dict[str, Any]:
    """The cross-modal StoryCloze layout spoken from the held-out stories (the offline stand-in)."""
    rec = produce_or_reuse(catalog_at(data_root), stage="synth", dataset="cross_modal_tsc", split="heldout",
                           out_path=out_dir, fingerprint=fingerprint,
                           produce=lambda: stage.speak_stand_in(stories_path, synth_cfg, seed, out_dir, max_items))
    return {**rec, "path": out_dir}


@task(name="tokenise-cross-modal", retries=1, tags=["gpu"], **CACHED)
def tokenise_cross_modal(layout_dir: str, centroids: str, units_cfg: UnitsConfig, device: str, out_path: str,
                         fingerprint: str, data_root: str) -> dict[str, Any]:
    """Units of every cross-modal item (the run's encoder and centroids) with its texts, one Parquet."""
    return produce_or_reuse(catalog_at(data_root), stage="pairs", dataset="cross_modal_tsc", split="heldout",
                            out_path=out_path, fingerprint=fingerprint,
                            produce=lambda: stage.tokenise_layout(layout_dir, centroids, units_cfg, data_root,
                                                                  device, out_path))


@task(name="score-cross-modal", retries=1, tags=["gpu"], **CACHED)
def score_cross_modal(run: str, checkpoint: str, init_dir: str, units_path: str, metrics: list[str],
                      cfg: InterleaveConfig, seed: int, batch_size: int, device: str, fingerprint: str,
                      data_root: str) -> list[dict[str, Any]]:
    """Cross-modal StoryCloze accuracies of one checkpoint, each recorded in `eval_results` (metric cm_tsc_*)."""
    results = stage.score_cross_modal(checkpoint, init_dir, units_path, metrics, cfg, seed, batch_size, device)
    catalog = catalog_at(data_root)
    weights = data_root_checkpoint_digest(data_root, checkpoint)
    out = []
    for res in results:
        catalog.record_eval(run, checkpoint, res["metric"], res["accuracy"], res["n"], res["ci_low"], res["ci_high"],
                            details={"fingerprint": fingerprint, "weights": weights, "items": str(units_path),
                                     "per_pair": res["per_pair"]})
        out.append({k: res[k] for k in ("metric", "accuracy", "n", "ci_low", "ci_high")} | {"checkpoint": checkpoint})
    return out


@task(name="tokenise-cm-prompts", retries=1, tags=["gpu"], **CACHED)
def tokenise_cm_prompts(layout_dir: str, cfg: InterleaveConfig, centroids: str, units_cfg: UnitsConfig, device: str,
                        out_path: str, fingerprint: str, data_root: str) -> dict[str, Any]:
    """Units of the cm_generate prompts: the first `cfg.cm_generate_prompts` `_mutual.wav` cut at
    `cfg.cm_generate_prompt_s`, one Parquet."""
    return produce_or_reuse(catalog_at(data_root), stage="pairs", dataset="cm_generate_prompts", split="heldout",
                            out_path=out_path, fingerprint=fingerprint,
                            produce=lambda: stage.tokenise_cm_prompts(layout_dir, cfg.cm_generate_prompts,
                                                                      cfg.cm_generate_prompt_s, centroids, units_cfg,
                                                                      data_root, device, out_path))


@task(name="cm-generate", retries=1, tags=["gpu"], **CACHED)
def cm_generate(run: str, checkpoint: str, init_dir: str, prompts_path: str, layout_dir: str, cfg: InterleaveConfig,
                eval_cfg: EvalConfig, seed: int, device: str, out_dir: str, fingerprint: str,
                data_root: str) -> list[dict[str, Any]]:
    """Text continuations of the spoken prompts, their GenPPL under `eval_cfg.ppl_lm` and auto-BLEU, recorded in
    `eval_results` (cm_generate_genppl, cm_generate_auto_bleu; the texts in details and `out_dir/cm_generate.json`).
    A judge LM that cannot be loaded leaves GenPPL recorded as skipped with the reason (auto-BLEU needs none)."""
    import json

    from slam_core.atomic import write_text_atomic
    from slam_core.eval.cm_generate import METRICS, SLAMKIT_DIFFERENCE, score_continuations
    from slam_core.eval.pairs import CheckpointNotFoundError
    from slam_core.eval.text_metrics import load_ppl_lm
    from tasks.evaluate import record_skip

    rows = stage.cm_generate(checkpoint, init_dir, prompts_path, layout_dir, cfg, seed, eval_cfg.batch_size, device)
    try:
        lm, lm_tok = load_ppl_lm(eval_cfg.ppl_lm, device)
        judge_error = None
    except CheckpointNotFoundError as err:
        lm, lm_tok, judge_error = None, None, str(err)
    res = score_continuations(rows, lm, lm_tok, eval_cfg.batch_size, prepend_bos=eval_cfg.genppl_bos == "prepend")
    result_path = Path(out_dir) / "cm_generate.json"
    write_text_atomic(result_path, json.dumps(res, indent=1) + "\n")
    samples = [{k: r[k] for k in ("item_id", "prompt_text", "cut_s", "continuation", "new_tokens", "nll",
                                   "auto_bleu")} for r in res["rows"]]
    details = {"fingerprint": fingerprint, "weights": data_root_checkpoint_digest(data_root, checkpoint),
               "n_samples": res["n_samples"], "n_empty": res["n_empty"], "note": res["note"],
               "slamkit_difference": SLAMKIT_DIFFERENCE, "ppl_lm": eval_cfg.ppl_lm, "result": str(result_path),
               "samples": samples}
    catalog = catalog_at(data_root)
    if judge_error:
        record_skip(data_root, run, checkpoint, [METRICS[0]], judge_error, fingerprint, retry=True)
        # no fingerprint on the rows: the task is not a cache hit, so the next run tries the judge LM again
        details["skip_fingerprint"] = details.pop("fingerprint")
    else:
        catalog.record_eval(run, checkpoint, METRICS[0], res["genppl"], res["n"], details=details)
    catalog.record_eval(run, checkpoint, METRICS[1], res["auto_bleu"], res["n_samples"], details=details)
    return [{"metric": m, "value": res[k], "n": n, "checkpoint": checkpoint}
            for m, k, n in ((METRICS[0], "genppl", res["n"]), (METRICS[1], "auto_bleu", res["n_samples"]))]
