"""Interleaved-path tasks (thin: the work is `slam_core.lm.interleave_stage`): TWIST init keeping the text
vocabulary, token-docs shards, the cross-modal StoryCloze stand-in, its units, and its scores in `eval_results`.
Each is cached by its fingerprint and recorded in the catalog like every other stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from data_catalog import produce_or_reuse
from slam_core.config import InterleaveConfig, ModelConfig, SynthConfig, UnitsConfig
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
