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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config value is invalid; the message names the dotted field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class RunConfig(_Section):
    name: str = Field("smoke", description="Run name: checkpoints, eval results and the report are filed under it.")
    seed: int = Field(1234, description="Master seed; every stage derives its own seed from it.")
    data_root: str | None = Field(
        None, description="Artifact root. None: $SLAM_DATA_ROOT, else ./slam-data."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Compute device; auto picks cuda when available.")


class CorpusConfig(_Section):
    source: Literal["builtin", "tinystories"] = Field(
        "builtin", description="Text source: the built-in seeded story/SWAG generator, or TinyStories+SWAG from the hub."
    )
    n_topics: int = Field(8, ge=2, description="Built-in generator: number of story topics (>= 8 for the demo).")
    n_train_stories: int = Field(240, ge=1, description="Stories spoken for pre-training.")
    n_heldout_stories: int = Field(64, ge=1, description="Held-out stories that become tSC-like evaluation pairs.")
    sentences_per_story: tuple[int, int] = Field((4, 6), description="Min and max sentences per built-in story.")
    n_swag_train: int = Field(96, ge=0, description="SWAG-like triples used as DPO preference pairs.")
    n_swag_heldout: int = Field(64, ge=0, description="SWAG-like triples held out as sSC-like evaluation pairs.")
    tinystories_hub_id: str = Field("roneneldan/TinyStories", description="Hub dataset id of TinyStories text.")
    swag_hub_id: str = Field("allenai/swag", description="Hub dataset id of SWAG (the 'regular' config, gold rows).")

    @model_validator(mode="after")
    def _check_sentences(self) -> "CorpusConfig":
        lo, hi = self.sentences_per_story
        if not 2 <= lo <= hi:
            raise ValueError("sentences_per_story must satisfy 2 <= min <= max")
        return self


class SynthConfig(_Section):
    backend: Literal["espeak", "kokoro"] = Field("espeak", description="TTS backend: offline espeak-ng voice or Kokoro-82M.")
    voices: list[str] = Field(
        ["en-us", "en-us+f3", "en-gb", "en-us+m3"], min_length=1,
        description="Voices; each recording/pair picks one from the seed. espeak: voice names; kokoro: voice ids or .pt paths.",
    )
    stories_per_recording: int = Field(6, ge=1, description="Stories concatenated into one long recording (gives VAD work).")
    gap_between_stories_s: float = Field(1.6, gt=0, description="Silence inserted between stories in a long recording.")
    words_per_minute: int = Field(165, ge=80, le=450, description="espeak speaking rate.")
    kokoro_model: str = Field("hexgrad/Kokoro-82M", description="Kokoro hub id or local dir (config.json + kokoro-v1_0.pth + voices/).")
    kokoro_speed: float = Field(1.0, gt=0, description="Kokoro speaking speed.")
    sample_rate_hz: int = Field(16000, description="Rate at which synthetic audio is stored (units stage reads 16 kHz).")


class VadConfig(_Section):
    threshold: float = Field(0.5, gt=0, lt=1, description="silero-vad speech probability threshold.")
    min_speech_s: float = Field(1.0, ge=0, description="Drop speech segments shorter than this.")
    max_segment_s: float = Field(30.0, gt=0, description="Split speech regions longer than this.")
    min_silence_s: float = Field(0.8, ge=0, description="Silence needed to end a segment (longer than sentence pauses).")
    speech_pad_s: float = Field(0.1, ge=0, description="Padding kept around each segment.")
    shard_recordings: int = Field(8, ge=1, description="Long recordings per segmentation shard (one Prefect task each).")


class UnitsConfig(_Section):
    encoder: str = Field(
        "slprl/mhubert-base-25hz",
        description="HubertModel hub id or local dir; 'tiny' builds (once) a random 25 Hz encoder under the data root.",
    )
    layer: int = Field(11, ge=0, description="hidden_states index whose output is quantised (11 = output of layer 11).")
    n_units: int = Field(500, ge=2, description="K-means clusters = speech vocabulary size.")
    kmeans_path: str | None = Field(
        None, description="Centroids (.npy/.safetensors). None: fit k-means with faiss on a seeded frame sample."
    )
    kmeans_sample_frames: int = Field(200_000, ge=100, description="Frames sampled to fit k-means.")
    kmeans_iters: int = Field(20, ge=1, description="faiss k-means iterations.")
    batch_size: int = Field(16, ge=1, description="Segments per encoder batch.")
    batching: Literal["exact", "padded"] = Field(
        "exact", description="exact: only segments with the same 25 Hz frame count share a batch (units equal "
        "one-at-a-time extraction bit for bit on CPU); padded: full length-sorted masked batches (more GPU "
        "occupancy, units may differ at rare argmin near-ties).")
    shard_segments: int = Field(256, ge=1, description="Segments per unit shard (one Prefect task each).")
    dedup: bool = Field(True, description="Collapse repeated units, keeping run lengths as durations.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Encoder dtype; auto: fp16 on GPU, fp32 on CPU.")


class ModelConfig(_Section):
    base: str = Field("Qwen/Qwen2.5-0.5B", description="Text LM hub id or local dir; 'tiny-qwen2' builds a tiny one locally.")
    twist_init: bool = Field(True, description="Initialise from the text LM (TWIST); False: random init from its config.")
    rope_theta: float | None = Field(10_000.0, description="RoPE base override (Qwen default is 1e6); None keeps the base's.")
    context_len: int = Field(1024, ge=16, description="Training sequence length in tokens.")
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="Autocast/training dtype on GPU (CPU trains fp32).")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="auto: flash_attention_2 when importable on CUDA, else sdpa."
    )
    tiny_hidden_size: int = Field(128, ge=8, description="'tiny-qwen2' only: hidden size.")
    tiny_layers: int = Field(4, ge=1, description="'tiny-qwen2' only: number of layers.")


class TrainConfig(_Section):
    budget_s: float = Field(86_400 - 1_800, gt=0, description="Wall-clock training budget; the LR schedule ends exactly at it.")
    max_steps: int | None = Field(None, ge=1, description="Optional cap on optimiser steps (the budget still applies).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    min_lr: float = Field(5e-5, ge=0, description="Final learning rate of the cosine decay.")
    warmup_frac: float = Field(0.01, ge=0, lt=1, description="Fraction of the (fitted) total steps spent warming up.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward pass.")
    grad_accum: int = Field(16, ge=1, description="Micro-batches per optimiser step.")
    grad_clip: float = Field(0.5, gt=0, description="Gradient-norm clip.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    checkpoint_every_s: float = Field(1800.0, gt=0, description="Save a resumable checkpoint this often.")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent step-N checkpoints kept on disk (older ones deleted).")
    log_every_steps: int = Field(10, ge=1, description="Log metrics every N optimiser steps.")
    calibration_steps: int = Field(5, ge=1, description="Steps timed after warm-up to fit total steps to the budget.")
    compile: bool = Field(False, description="torch.compile the model.")
    val_fraction: float = Field(0.02, ge=0, lt=0.5, description="Fraction of training documents held out for validation loss.")


class DpoConfig(_Section):
    enabled: bool = Field(True, description="Run DPO after pre-training.")
    budget_s: float = Field(1_800.0, gt=0, description="Wall-clock DPO budget.")
    max_steps: int | None = Field(None, ge=1, description="Optional cap on DPO steps.")
    beta: float = Field(0.1, gt=0, description="DPO inverse temperature.")
    lr: float = Field(5e-5, gt=0, description="Peak DPO learning rate.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps before inverse-sqrt decay.")
    micro_batch_size: int = Field(4, ge=1, description="Preference pairs per forward pass.")
    grad_accum: int = Field(16, ge=1, description="Micro-batches per optimiser step.")
    grad_clip: float = Field(0.5, gt=0, description="Gradient-norm clip.")
    max_prompt_tokens: int = Field(256, ge=8, description="Prompt is truncated from the left to this many tokens.")
    max_completion_tokens: int = Field(512, ge=8, description="Chosen/rejected are truncated to this many tokens.")
    checkpoint_every_s: float = Field(600.0, gt=0, description="Save a resumable DPO checkpoint this often (and at the end).")


class EvalConfig(_Section):
    metrics: list[str] = Field(["tsc_like", "ssc_like", "generate"], description="Metrics to compute for each checkpoint.")
    batch_size: int = Field(16, ge=1, description="Pairs per scoring batch.")
    n_generate: int = Field(4, ge=0, description="Prompts used for sampled continuations.")
    prompt_s: float = Field(3.0, gt=0, description="Prompt length in seconds of audio.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature.")
    top_k: int = Field(25, ge=1, description="Top-k sampling.")
    max_new_tokens: int = Field(150, ge=1, description="Tokens generated per continuation.")
    repetition_penalty: float = Field(1.0, ge=1.0, description="HF repetition penalty (the paper uses 1.1 after DPO).")
    reference_path: str | None = Field(None, description="Directory with the published eval sets (sBLIMP, sSC, ...).")


class ParallelConfig(_Section):
    n_gpus: int = Field(1, ge=0, description="GPUs used for training (>1 launches torchrun DDP).")
    fsdp: bool = Field(False, description="Shard parameters with FSDP (for larger bases).")
    task_runner: Literal["threads", "dask"] = Field("threads", description="Prefect task runner for shard stages.")
    max_workers: int = Field(2, ge=1, description="Concurrent shard tasks.")
    dask_address: str | None = Field(None, description="Existing Dask scheduler address; None starts a local cluster.")


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
    def tokens_per_step(self) -> int:
        return self.train.micro_batch_size * self.train.grad_accum * self.model.context_len * max(1, self.parallel.n_gpus)

    def resolve(self) -> dict[str, Any]:
        """Validate cross-field constraints and return the config plus derived values as plain JSON."""
        if self.train.min_lr > self.train.lr:
            raise ConfigError("train.min_lr: must not exceed train.lr")
        if self.units.layer > 24:
            raise ConfigError("units.layer: no supported encoder has more than 24 layers")
        if self.eval.max_new_tokens >= self.model.context_len:
            raise ConfigError("eval.max_new_tokens: must be smaller than model.context_len")
        out = self.model_dump(mode="json")
        out["derived"] = {
            "data_root": str(self.data_root),
            "vocab_size": self.vocab_size,
            "tokens_per_step": self.tokens_per_step,
        }
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
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{key}: unknown config section '{part}'")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"{key}: unknown config field '{leaf}'")
        node[leaf] = _parse_value(value) if isinstance(value, str) else value
    return validate_config(data)


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. train.budget_s=60")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def validate_config(data: dict[str, Any]) -> SlamConfig:
    """Build a SlamConfig from plain data; errors name the dotted field."""
    try:
        return SlamConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{field}: {first['msg']} (got {first.get('input')!r})") from None
