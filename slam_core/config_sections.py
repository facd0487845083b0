"""The typed config sections, one per stage, with a description per field.

`slam_core.config.SlamConfig` holds one of each; import them from `slam_core.config`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ConfigError(ValueError):
    """A config value is invalid; the message names the dotted field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class RunConfig(_Section):
    name: str = Field("smoke", description="Run name: checkpoints, eval results and the report are filed under it.")
    seed: int = Field(1234, ge=0, le=2**32 - 1,
                      description="Master seed (0 .. 2**32-1, as numpy accepts); every stage derives its own from it.")
    data_root: str | None = Field(
        None, description="Artifact root. None: $SLAM_DATA_ROOT, else ./slam-data."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Compute device; auto picks cuda when available.")
    skip_preflight: bool = Field(
        False, description="Skip the disk/memory/GPU preflight check that refuses a run the machine cannot hold.")


PretrainSet = Literal["librilight", "librispeech", "stinystories"]
LibriSpeechPart = Literal["train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other",
                          "test-clean", "test-other"]
LibriLightSubset = Literal["small", "medium", "large"]


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
    tinystories_revision: str | None = Field(
        None, description="Pinned hub revision (commit) of TinyStories; None: default branch, logged as unpinned.")
    swag_revision: str | None = Field(
        None, description="Pinned hub revision (commit) of SWAG; None: default branch, logged as unpinned.")
    tinystories_local_dir: str | None = Field(
        None, description="Local copy of TinyStories in hub layout (*.parquet with 'text', or *.txt); nothing downloaded.")
    swag_local_dir: str | None = Field(
        None, description="Local copy of SWAG in hub layout (regular/*.parquet or *.csv); nothing downloaded.")
    max_hub_rows: int | None = Field(
        None, ge=1, description="Cap on TinyStories stories and SWAG rows read per split (None: all of them).")
    swag_max_auto_bleu: float = Field(
        0.3, gt=0, le=1, description="SWAG triples with bigram auto-BLEU of prompt + chosen at or above this are dropped.")
    stinystories_dir: str | None = Field(
        None, description="sTinyStories audio shards (every *.parquet below it, sorted: `slam synth stinystories` "
        "output or the published slprl/sTinyStories) whose utterances are the pre-training units; relative to the "
        "data root unless absolute. None: the corpus stories are spoken into long recordings and cut by VAD.")
    spokenswag_dir: str | None = Field(
        None, description="SpokenSwag shards (every preferences-*.parquet in it, sorted: `slam synth spokenswag` "
        "output, synthesised or converted from the published set) that become the DPO pairs; relative to the data "
        "root unless absolute. None: the corpus preference triples are spoken into one file.")
    pretrain_sets: list[PretrainSet] = Field(
        [], description="Speech sets mixed for pre-training, as Table 4 of the paper (librilight, librispeech, "
        "stinystories; each becomes unit shards under units/<set>/<split>/). Empty: the corpus stories only "
        "(spoken by synth.backend, or corpus.stinystories_dir when set).")
    librispeech_dir: str | None = Field(
        None, description="Local LibriSpeech copy (a folder holding LibriSpeech/<part>/ or <part>/); None: the "
        "parts are downloaded from OpenSLR 12 into raw/librispeech/ and checked against the published checksums.")
    librispeech_train_parts: list[LibriSpeechPart] = Field(
        ["train-clean-100", "train-clean-360", "train-other-500"],
        description="LibriSpeech parts trained on (the paper: all 960 h).")
    librispeech_val_parts: list[LibriSpeechPart] = Field(
        ["dev-clean", "dev-other"], description="LibriSpeech parts used as validation sets (the paper, Appendix C), "
        "each reported as its own validation loss.")
    librilight_dir: str | None = Field(
        None, description="Local Libri-Light copy (a folder holding <subset>/<speaker>/<book>/*.flac + .json); "
        "None: the subsets are downloaded into raw/librilight/.")
    librilight_subsets: list[LibriLightSubset] = Field(
        ["small", "medium", "large"], description="Libri-Light subsets used (all three: 57.7k h of audio, about the "
        "paper's 50k h once its voice activity is kept; Table 8).")
    librilight_val_fraction: float = Field(
        0.01, ge=0, lt=1, description="Fraction of Libri-Light files held out as its validation set (the paper: 1 %, "
        "chosen at random; here the files with the smallest seeded hash of their path, at least one file).")

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
    spokenswag_voices: list[str] | None = Field(
        None, description="SpokenSwag voices; None: af_heart, am_fenrir, bf_emma, bm_george on kokoro, `voices` on espeak.")
    max_utterance_chars: int = Field(
        400, ge=20, description="sTinyStories: stories longer than this are split at sentence (then clause, word) ends.")
    shard_rows: int = Field(256, ge=1, description="Utterances or SWAG pairs per synthesis shard (one task each).")
    workers: int = Field(1, ge=1, description="Synthesis worker processes (each loads its own TTS model).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Kokoro device; auto picks cuda when available.")
    kokoro_batch_size: int = Field(
        16, ge=1, description="Kokoro sentences per batched forward (length-sorted, masked); 1 = one at a time.")
    kokoro_max_batch_tokens: int = Field(
        8192, ge=64, description="Kokoro phoneme tokens per batched forward, padding included (bounds GPU memory).")
    kokoro_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Kokoro compute dtype on CUDA (autocast: convolutions, matmuls and LSTMs in the reduced "
        "type, weights and normalisation statistics in float32); the CPU always computes in float32. The GPU bench "
        "reports the audio difference and unit agreement of each against float32.")
    kokoro_g2p_workers: int | None = Field(
        None, ge=0, description="Kokoro G2P (misaki/espeak) worker processes per synthesis worker: they turn text into "
        "phoneme ids while the model speaks earlier batches; 0: G2P in the synthesis process. None: min(8, CPU cores / "
        "synth.workers) on CUDA (0 below 2), 0 on the CPU (the model needs the cores). Never changes the audio.")


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
        None, description="Centroids (.npy/.safetensors; relative to the data root unless absolute), e.g. the "
        "published mHuBERT-25Hz km500 converted once with `slam units convert-kmeans`. Leave empty only with "
        "units.fit_kmeans=true.")
    kmeans_source_sha256: str | None = Field(
        None, description="Full sha256 of the k-means pickle the centroids must have been converted from (checked "
        "against the record `slam units convert-kmeans` writes beside them, with the centroids' own digest) before "
        "any work. Paper presets: the published file's. None: not checked.")
    fit_kmeans: bool = Field(
        False, description="Fit a new k-means with faiss on a seeded frame sample of this run's speech instead of "
        "using units.kmeans_path. An explicit opt-in: the unit ids then differ from the published quantiser's, so "
        "the published vocoder, released Slam models and GenPPL do not apply; the recorded config, `slam plan` and "
        "the report say so.")
    kmeans_sample_frames: int = Field(200_000, ge=100, description="Frames sampled to fit k-means.")
    kmeans_iters: int = Field(20, ge=1, description="faiss k-means iterations.")
    batch_size: int = Field(16, ge=1, description="Segments per encoder batch.")
    batching: Literal["invariant", "padded"] = Field(
        "invariant", description="invariant: length-sorted batches whose samples and frames run through the conv stack "
        "(gathered windows, per-segment GroupNorm) and the transformer as one (rows, D) matrix with row-invariant "
        "kernels and per-segment attention, no padding anywhere, so a segment's units are the same "
        "bits alone or in any batch, on CPU and GPU; padded: length-sorted masked (B, T, D) batches with the stock "
        "kernels (units may differ from one-at-a-time extraction at rare argmin near-ties).")
    invariant_matmul: Literal["auto", "triton", "blocks"] = Field(
        "auto", description="Matmuls of invariant batching: triton (fixed-tile kernel, CUDA), blocks (torch ops on "
        "fixed-size row blocks); auto: triton on CUDA when importable, else blocks.")
    shard_segments: int = Field(256, ge=1, description="Segments per unit shard (one Prefect task each).")
    dedup: bool = Field(True, description="Collapse repeated units, keeping run lengths as durations.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="Encoder dtype on GPU (CPU always runs fp32); auto: fp16 on GPU. fp32 by default: the "
        "published k-means was fitted on fp32 features, and no measurement yet shows bf16/fp16 units agreeing with "
        "fp32 ones (bench/bench_units.py records the agreement under dtype_agreement on a GPU).")


class ModelConfig(_Section):
    base: str = Field("Qwen/Qwen2.5-0.5B", description="Text LM hub id or local dir; 'tiny-qwen2' builds a tiny one locally.")
    twist_init: bool = Field(True, description="Initialise from the text LM (TWIST); False: random init from its config.")
    rope_theta: float | None = Field(10_000.0, description="RoPE base override (Qwen default is 1e6); None keeps the base's.")
    context_len: int = Field(1024, ge=16, description="Training sequence length in tokens.")
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="Autocast/training dtype on GPU (CPU trains fp32).")
    attn_implementation: Literal["auto", "packed_fa2", "packed_varlen", "packed_flex", "packed_sdpa", "sdpa", "eager",
                                 "flash_attention_2"] = Field(
        "auto", description="Attention for training on packed rows. auto: a packed kernel (no dense mask, no host "
        "sync): on CUDA packed_fa2 (flash-attn, when importable), else packed_varlen (torch varlen_attn), else "
        "packed_flex (FlexAttention); on CPU packed_sdpa (SDPA with a per-micro-batch document mask). sdpa/eager/"
        "flash_attention_2: transformers' own implementations, packing derived from position_ids."
    )
    tiny_hidden_size: int = Field(128, ge=8, description="'tiny-qwen2' only: hidden size.")
    tiny_layers: int = Field(4, ge=1, description="'tiny-qwen2' only: number of layers.")


class TrainConfig(_Section):
    budget_s: float = Field(86_400 - 1_800, gt=0, description="Wall-clock training budget; the LR schedule ends exactly at it.")
    max_steps: int | None = Field(None, ge=1, description="Optional cap on optimiser steps (the budget still applies).")
    schedule_by: Literal["budget", "steps"] = Field(
        "budget", description="budget: the schedule's length is fitted to budget_s from measured step times (the "
        "paper's wall-clock recipe), capped by max_steps. steps: the schedule is exactly max_steps long and never "
        "looks at the clock, so a slow or busy machine trains the same model; budget_s then only stops a run that "
        "overruns it.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    min_lr: float = Field(5e-5, ge=0, description="Final learning rate of the cosine decay.")
    warmup_frac: float = Field(0.01, ge=0, lt=1, description="Fraction of the (fitted) total steps spent warming up "
                               "(paper Table 4: 1 %; rounded up, as HF's get_warmup_steps).")
    warmup_min_steps: int = Field(0, ge=0, description="Warm-up lasts at least this many steps: SlamKit warms up "
                                  "max(100 steps, 1 %) (config/training_args/default.yaml, cli/train.py); the paper "
                                  "presets set 100, which 1 % of 17,625 steps (176) exceeds anyway.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward pass in the recipe (paper Table 4: per "
                                  "device batch size); with grad_accum it defines the effective batch.")
    grad_accum: int = Field(16, ge=1, description="Micro-batches per optimiser step, summed over all GPUs (each of W "
                                                  "GPUs runs grad_accum / W; must divide evenly), so the effective "
                                                  "batch micro_batch_size x grad_accum x context_len is the same on "
                                                  "any number of GPUs.")
    grad_clip: float = Field(0.5, gt=0, description="Gradient-norm clip.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas (SlamKit's HF Trainer defaults; the "
                                       "paper only says AdamW).")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon (HF Trainer default, as SlamKit).")
    checkpoint_every_s: float = Field(1800.0, gt=0, description="Save a resumable checkpoint this often.")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent step-N checkpoints kept on disk (older ones deleted).")
    log_every_steps: int = Field(10, ge=1, description="Log metrics every N optimiser steps.")
    calibration_steps: int = Field(5, ge=1, description="Steps timed (after the untimed ones) to fit the total "
                                   "steps to the budget; until then the LR is held at the smallest any fit could give.")
    untimed_steps: int = Field(1, ge=1, description="First steps of a fresh run not timed for the fit: their time "
                               "includes allocator warm-up and any recompilation (compilation itself happens before "
                               "the first step, see compile).")
    compile: bool | Literal["auto"] = Field(
        "auto", description="Regional torch.compile of the decoder layers (dynamic=False). auto: on CUDA only. The "
        "compile time counts against budget_s and is reported; the schedule calibrates after it.")
    run_micro_batch: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="Sequences per forward pass actually run, a speed setting: the micro-batches per step "
        "are re-split so that the effective batch (micro_batch_size x grad_accum sequences) stays exactly the "
        "recipe's. auto: on CUDA the largest that fits, probed at start and cached per GPU model under the data "
        "root; on CPU micro_batch_size.")
    micro_batch_memory_share: float = Field(
        0.85, gt=0, le=1, description="run_micro_batch=auto takes the largest micro-batch whose probed peak memory "
        "(an eager forward + backward of synthetic rows, plus the AdamW moments) stays under this share of the GPU's "
        "memory. The rest is headroom for what a long run does beside the step: checkpoint saves, validation passes, "
        "allocator fragmentation. The log says which micro-batch it chose and why; lower this if a run still runs "
        "out of memory mid-training (it then also lowers the micro-batch itself and resumes, tasks/train.py).")
    liger_kernels: bool = Field(
        False, description="Apply liger-kernel's fused RMSNorm, SwiGLU and RoPE (CUDA; needs the 'liger' extra). "
        "Fused linear cross-entropy is not used: the 502-token head is too small to gain from it.")
    val_fraction: float = Field(0.02, ge=0, lt=0.5, description="Fraction of training documents held out for validation loss.")
    dataset_weights: dict[str, float] | None = Field(
        None, description="Pre-training mix: dataset name (librilight, librispeech, stinystories, ...) -> probability "
        "weight of drawing its next document (sample-level ratios, normalised). SlamKit mixes its `train_path` list "
        "the same way: `train_ratios` -> datasets.interleave_datasets(probabilities, seed=0), with repetitions [1] "
        "and stopping_strategy first_exhausted (config/data/pretrain_multi_ds.yaml, slamkit/data/hf_dataset.py); "
        "the Slam ratios are not published, so None (default) weights each set by its number of documents: the mix "
        "is a uniform shuffle of all training documents and every set runs out at the same time (first_exhausted "
        "drops nothing). Sets that run out start a new, reshuffled epoch; a budgeted run sees < 1 epoch at paper scale.")


    @model_validator(mode="after")
    def _check_schedule(self) -> "TrainConfig":
        if self.schedule_by == "steps" and self.max_steps is None:
            raise ValueError("train.schedule_by=steps needs train.max_steps (the schedule's length)")
        return self

    @field_validator("dataset_weights")
    @classmethod
    def _check_weights(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        bad = {k: v for k, v in (weights or {}).items() if not v > 0}
        if bad:
            raise ValueError(f"every weight must be > 0 (got {bad})")
        return weights

    @property
    def sequences_per_step(self) -> int:
        """The effective batch in sequences, over all GPUs (whatever micro-batch actually runs)."""
        return self.micro_batch_size * self.grad_accum


class DpoConfig(_Section):
    enabled: bool = Field(True, description="Run DPO after pre-training.")
    budget_s: float = Field(1_800.0, gt=0, description="Wall-clock DPO budget.")
    max_steps: int | None = Field(None, ge=1, description="Optional cap on DPO steps.")
    max_epochs: float | None = Field(None, gt=0, description="Optional cap on passes over the preference pairs "
                                     "(Slam (scaled): 2 epochs, paper §6); None: the budget decides.")
    beta: float = Field(0.1, gt=0, description="DPO inverse temperature.")
    lr: float = Field(5e-5, gt=0, description="Peak DPO learning rate.")
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up steps (SlamKit's DPO args: 100, from "
                              "config/training_args/default.yaml; the paper does not give it).")
    lr_scheduler: Literal["inverse_sqrt", "constant"] = Field(
        "inverse_sqrt", description="After warm-up: inverse_sqrt (paper Table 5, HF get_inverse_sqrt_schedule) or "
        "constant (what SlamKit's config amounts to: cosine_with_min_lr with min_lr = lr = 5e-5).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas (HF defaults, as SlamKit's DPOConfig).")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon (HF default).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (HF default 0).")
    micro_batch_size: int = Field(4, ge=1, description="Preference pairs per forward pass.")
    grad_accum: int = Field(16, ge=1, description="Micro-batches per optimiser step.")
    grad_clip: float = Field(0.5, gt=0, description="Gradient-norm clip.")
    max_prompt_tokens: int = Field(512, ge=8, description="Prompt is truncated from the left to this many tokens "
                                   "(TRL DPOConfig's default max_prompt_length, which SlamKit keeps).")
    max_completion_tokens: int = Field(512, ge=8, description="Chosen/rejected are truncated to this many tokens, so "
                                       "prompt + completion fit the 1024-token context of paper Table 5.")
    checkpoint_every_s: float = Field(600.0, gt=0, description="Save a resumable DPO checkpoint this often (and at the end).")
    compile: bool | Literal["auto"] = Field(
        "auto", description="Regional torch.compile of the decoder layers after the reference pass (auto: on CUDA "
        "only); its time counts against budget_s.")
    run_micro_batch: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="Pairs per forward pass actually run, a speed setting: a step still holds "
        "micro_batch_size x grad_accum pairs, drawn in the same order. auto: on CUDA the largest divisor of that "
        "which fits (probed with rows of max_prompt_tokens + max_completion_tokens, cached per GPU model under the "
        "data root); on CPU micro_batch_size.")


class EvalConfig(_Section):
    allow_skip: bool = Field(
        False, description="Run even when evaluation inputs are missing (reference sets, vocoder, ASR model, GenPPL "
        "text LM, judge); those metrics are recorded as skipped and the report lists them. False: stop before any "
        "work, naming each missing input and the option that provides it.")
    metrics: list[str] = Field(
        ["tsc_like", "ssc_like", "generate"],
        description="Metrics per checkpoint: tsc_like, ssc_like (built-in spoken pairs); sblimp, swuggy (= swuggy_inter "
        "+ swuggy_oov), ssc, tsc, salmon (every part + their mean) from eval.reference_path; generate (sampled "
        "continuations for the report); genppl (vocoder -> Whisper -> text-LM perplexity, plus auto_bleu); judge "
        "(1-5 LLM rating).")
    batch_size: int = Field(16, ge=1, description="Pairs per scoring batch.")
    n_generate: int = Field(4, ge=0, description="Prompts used for sampled continuations.")
    generation_batch_size: int = Field(
        32, ge=1, description="Prompts sampled together (left-padded, KV cache, one seeded sampler per prompt, so "
        "a prompt's continuation does not depend on its batch); lower it if the GPU runs out of memory.")
    prompt_s: float = Field(3.0, gt=0, description="Prompt length in seconds of audio.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature.")
    top_k: int = Field(25, ge=1, description="Top-k sampling.")
    max_new_tokens: int = Field(150, ge=1, description="Tokens generated per continuation.")
    repetition_penalty: float = Field(1.0, ge=1.0, description="HF repetition penalty (the paper uses 1.1 after DPO).")
    reference_path: str | None = Field(
        None, description="Root of the published eval sets, laid out as SlamKit's $SLAM_REFERENCE_PATH: sblimp/, "
        "swuggy_inter/, swuggy_oov/, sSC/, tSC/ (WAV files), salmon/<part>/ (sample_<i>_<j>.wav, or the hub's "
        "*.parquet with positive_audio/negative_audio). None: those metrics are recorded as skipped.")
    max_pairs: int | None = Field(None, ge=1, description="Score only the first N pairs of each published set "
                                  "(quick looks); None: all pairs, as the paper.")
    genppl_prompts: Literal["ssc", "peoples_speech", "prompt_audio", "tsc_like"] = Field(
        "tsc_like", description="Prompts of generate/genppl/judge (first n_generate utterances), cut on the waveform "
        "at prompt_s and then encoded, as SlamKit: ssc = the correct samples of Spoken StoryCloze under "
        "reference_path/sSC (the paper's GenPPL prompts, Section 3; the paper presets' default); peoples_speech = "
        "People's Speech test (Appendix D.3; `slam data prepare peoples_speech` first); prompt_audio = the folder "
        "eval.prompt_audio; tsc_like = the built-in pairs' positive utterances (offline smoke; their units are cut).")
    prompt_audio: str | None = Field(
        None, description="With genppl_prompts=prompt_audio: a directory of prompt audio (recursive, sorted); a "
        "<file>.json beside a file with word alignments cuts the prompt at the word end closest to prompt_s.")
    use_alignment: bool = Field(True, description="The judge's prompts end at the word end closest to prompt_s when "
                                "an alignment JSON exists (SlamKit llm_as_judge.yaml use_alignment: true).")
    genppl_use_alignment: bool = Field(False, description="The same for the prompts of generate/genppl; SlamKit's "
                                       "asr_perplexity cuts at prompt_s exactly (no use_alignment).")
    vocoder: str | None = Field(
        None, description="Unit vocoder for genppl/judge: a directory with the textlesslib checkpoint "
        "(hifigan_lj_mhubert_base_25hz.pt) and its config JSON, the .pt file itself (config beside it), or "
        "'mhubert-base-25hz-kmeans-500-hifigan' (looked up in $TEXTLESS_CHECKPOINT_ROOT). None: genppl and judge "
        "are recorded as skipped.")
    asr_model: str = Field("large-v3-turbo", description="Whisper model for genppl/judge: an openai-whisper name "
                           "(from ~/.cache/whisper) or a local checkpoint file.")
    asr_language: str | None = Field(
        None, description="Language forced on Whisper (e.g. 'en'). None: Whisper detects it per utterance, as SlamKit's "
        "ASR pipeline does (no language forced); English-only (*.en) models always transcribe English.")
    asr_max_tokens: int | None = Field(None, ge=1, description="Cap on Whisper tokens decoded per transcript "
                                       "(None: whisper's default, n_text_ctx // 2).")
    ppl_lm: str = Field("meta-llama/Llama-3.2-1B", description="Text LM (hub id or local save_pretrained dir with "
                        "tokenizer) whose perplexity of the transcripts is GenPPL.")
    genppl_bos: Literal["slamkit", "prepend"] = Field(
        "slamkit", description="GenPPL's first token: slamkit = tokenise as the LM's tokenizer does and score from "
        "the second token (SlamKit's calc_nll; with Llama-3.2-1B, which adds BOS, every word is scored); prepend = "
        "put the tokenizer's BOS first when it adds none, so the first word is scored too (other numbers than "
        "SlamKit's for such a tokenizer).")
    judge_model: str | None = Field(None, description="Judge: a local HF causal LM (hub id or dir), or, with "
                                    "judge_endpoint, the model name sent to the endpoint. None and no endpoint: "
                                    "judge is recorded as skipped.")
    judge_endpoint: str | None = Field(None, description="OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1) "
                                       "for the judge; nothing remote is contacted unless set.")
    judge_api_key_env: str | None = Field(None, description="Name of the environment variable holding the judge "
                                          "endpoint's API key (the key itself is never stored in the config).")
    judge_allow_insecure: bool = Field(False, description="Allow sending the judge API key over plain http to a "
                                       "host other than this machine (only on a network you trust; https and "
                                       "127.0.0.1 endpoints need no opt-in).")
    judge_min_file_s: float | None = Field(
        6.0, ge=0, description="The judge rates only prompts cut from files at least this long, in seconds (SlamKit "
        "config/metric/llm_as_judge.yaml min_file_length: 6); None or 0: every prompt.")


class ParallelConfig(_Section):
    n_gpus: int = Field(1, ge=0, description="Training processes: 0 = every visible GPU (1 on CPU); >1 launches "
                                             "torchrun with DDP (gloo processes on CPU).")
    fsdp: bool = Field(False, description="With >1 process: shard parameters, gradients and optimiser state with "
                                          "FSDP2 instead of DDP (for larger bases).")
    task_runner: Literal["threads", "dask"] = Field("threads", description="Prefect task runner for shard stages.")
    max_workers: int = Field(2, ge=1, description="Concurrent shard tasks.")
    dask_address: str | None = Field(None, description="Existing Dask scheduler address; None starts a local cluster.")
