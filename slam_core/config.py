"""Typed configuration of every stage, validated before any work starts.

One `SlamConfig` holds a section per stage. Presets (`slam_core.presets`) build complete configs;
`apply_overrides` applies `--set key=value` strings; `SlamConfig.resolve()` computes derived values
(vocabulary size, tokens per optimiser step, data root) once, so no stage derives anything itself.
A bad value raises `ConfigError` naming the dotted field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from slam_core.config_sections import (  # noqa: F401  (re-exported: the sections are part of this API)
    ConfigError, _Section, RunConfig, CorpusConfig, SynthConfig, VadConfig, UnitsConfig, ModelConfig, TrainConfig,
    DpoConfig, EvalConfig, ParallelConfig,
)
from slam_core.config_interleave import CM_GENERATE, DOC_KINDS, InterleaveConfig  # noqa: F401


class SlamConfig(_Section):
    run: RunConfig = Field(default_factory=RunConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    vad: VadConfig = Field(default_factory=VadConfig)
    units: UnitsConfig = Field(default_factory=UnitsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    dpo: DpoConfig = Field(default_factory=DpoConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    interleave: InterleaveConfig = Field(default_factory=InterleaveConfig)

    # ---- derived values (read-only views computed from the fields above) ----
    @property
    def data_root(self) -> Path:
        root = self.run.data_root or os.environ.get("SLAM_DATA_ROOT") or "slam-data"
        return Path(root).expanduser().resolve()

    @property
    def vocab_size(self) -> int:
        """PAD 0, BOS/EOS 1, then one id per unit."""
        return self.units.n_units + 2

    @property
    def max_tokens_per_step(self) -> int:
        """At most this many real tokens an optimiser step (its examples are chunks of <= context_len tokens);
        global: any n_gpus, any run_micro_batch."""
        return self.train.sequences_per_step * self.model.context_len

    def resolve(self) -> dict[str, Any]:
        """Validate cross-field constraints and return the config plus derived values as plain JSON."""
        if self.train.min_lr > self.train.lr:
            raise ConfigError("train.min_lr: must not exceed train.lr")
        if self.units.layer > 24:
            raise ConfigError("units.layer: no supported encoder has more than 24 layers")
        if "stinystories" in self.corpus.pretrain_sets and not self.corpus.stinystories_dir:
            raise ConfigError("corpus.pretrain_sets: 'stinystories' needs corpus.stinystories_dir (the folder of its "
                              "audio Parquet shards, e.g. synth/stinystories/train)")
        if self.eval.prompt_audio and self.eval.genppl_prompts != "prompt_audio":
            raise ConfigError(f"eval.prompt_audio: set, but prompts come from eval.genppl_prompts="
                              f"'{self.eval.genppl_prompts}' — add eval.genppl_prompts=prompt_audio to use the folder")
        if self.eval.genppl_prompts == "prompt_audio" and not self.eval.prompt_audio:
            raise ConfigError("eval.genppl_prompts: 'prompt_audio' needs eval.prompt_audio=DIR (a folder of prompt audio)")
        if self.eval.max_new_tokens >= self.model.context_len:
            raise ConfigError("eval.max_new_tokens: must be smaller than model.context_len")
        if self.units.fit_kmeans and self.units.kmeans_path:
            raise ConfigError("units.fit_kmeans: true together with units.kmeans_path — set units.kmeans_path=null "
                              "to fit a new k-means, or units.fit_kmeans=false to use the file")
        if not self.units.fit_kmeans and not self.units.kmeans_path:
            raise ConfigError("units.kmeans_path: no quantiser — convert the published k-means once with `slam units "
                              "convert-kmeans` and set units.kmeans_path, or opt in to a new one with "
                              "units.fit_kmeans=true")
        if self.interleave.enabled:
            self._check_interleaved()
        out = self.model_dump(mode="json")
        out["derived"] = {
            "data_root": str(self.data_root),
            "vocab_size": self.vocab_size,
            "examples_per_step": self.train.sequences_per_step,
            "max_tokens_per_step": self.max_tokens_per_step,
            "quantizer": self.quantizer_summary(),
            "warnings": self.recipe_warnings(),
        }
        return out

    def _check_interleaved(self) -> None:
        weights = self.train.dataset_weights or {}
        if set(weights) != set(DOC_KINDS):
            raise ConfigError(f"train.dataset_weights: the interleaved mix weights its sets by kind — give "
                              f"{', '.join(DOC_KINDS)} (SlamKit train_inter_scale: 0.2024 / 0.5433 / 0.2543), "
                              f"got {sorted(weights) or 'none'}")
        if CM_GENERATE in self.interleave.cross_modal_metrics and \
                self.interleave.cm_generate_max_new_tokens >= self.model.context_len:
            raise ConfigError(f"interleave.cm_generate_max_new_tokens: {self.interleave.cm_generate_max_new_tokens} "
                              f"leaves no room for the prompt in model.context_len {self.model.context_len} — "
                              "lower it (SlamKit: 150)")
        if self.dpo.enabled:
            raise ConfigError("dpo.enabled: the interleaved path has no DPO (SlamKit does not support preference "
                              "alignment of interleaved models) — set dpo.enabled=false")

    @property
    def kmeans_file(self) -> Path | None:
        """units.kmeans_path resolved (relative paths are under the data root)."""
        from slam_core.paths import under_root

        return under_root(self.data_root, self.units.kmeans_path) if self.units.kmeans_path else None

    def quantizer_summary(self) -> dict[str, Any]:
        """Where the units come from, for the recorded config, `slam plan` and the report: source "fitted",
        "published" (centroids checked against the published pickle's sha256) or "file"; and whether they can be
        used with the published vocoder and models."""
        from slam_core import published_kmeans

        if self.units.fit_kmeans:
            return {"source": "fitted", "compatible_with_published": False, "note": published_kmeans.INCOMPATIBLE_NOTE}
        published = (self.units.kmeans_source_sha256 or "").lower() == published_kmeans.SHA256
        return {"source": "published" if published else "file", "path": str(self.kmeans_file),
                "compatible_with_published": published,
                "note": "published mHuBERT-25Hz km500 centroids (sha256 checked)" if published else
                        "centroids from units.kmeans_path, origin not checked against the published quantiser"}

    def recipe_warnings(self) -> list[str]:
        """Choices that make the run's results not comparable with the paper's, each said once."""
        out = []
        if self.units.fit_kmeans:
            from slam_core import published_kmeans

            out.append(published_kmeans.INCOMPATIBLE_NOTE)
        if self.eval.allow_skip:
            out.append("eval.allow_skip=true: metrics whose inputs are missing are recorded as skipped")
        return out

    def section_json(self, *names: str) -> str:
        """Canonical JSON of some sections (input to stage fingerprints)."""
        dumped = self.model_dump(mode="json")
        return json.dumps({n: dumped[n] for n in names}, sort_keys=True)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # bare strings: --set model.base=Qwen/Qwen2.5-0.5B


def apply_overrides(cfg: SlamConfig, overrides: list[str] | dict[str, Any] | None) -> SlamConfig:
    """Return a validated copy of `cfg` with dotted overrides (`train.budget_s=60` or a dict) applied."""
    if not overrides:
        return cfg
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
    data = cfg.model_dump(mode="json")
    for key, value in items:
        node = data
        *parents, leaf = key.split(".")
        for depth, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config section '{part}' — --set {key} — "
                                  f"{_did_you_mean(part, node, '.'.join(parents[:depth]))}")
            node = node[part]
        if leaf not in node or not parents:
            raise ConfigError(f"unknown config field '{leaf}' — --set {key} — "
                              f"{_did_you_mean(leaf, node, '.'.join(parents))}")
        node[leaf] = _parse_value(value) if isinstance(value, str) else value
    return validate_config(data)


def _did_you_mean(name: str, node: dict[str, Any], prefix: str) -> str:
    """A hint naming the closest known key(s) at this level, else listing them."""
    import difflib

    known = sorted(node)
    dotted = [f"{prefix}.{k}" if prefix else k for k in known]
    close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(f"{prefix}.{c}" if prefix else c for c in close) + "?"
    return "known: " + ", ".join(dotted[:40]) + (" …" if len(dotted) > 40 else "")


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"malformed override (expected key=value) — --set {text} — write it as e.g. train.budget_s=60")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def validate_config(data: dict[str, Any]) -> SlamConfig:
    """Build a SlamConfig from plain data; errors name the dotted field."""
    try:
        return SlamConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{field}: {first['msg']} (got {first.get('input')!r}) — {field} — "
                          f"set a valid value with --set {field}=…") from None
