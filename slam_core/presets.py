"""Named presets: each function returns a complete, validated `SlamConfig`. A preset is data, not code paths.

- `smoke`: CPU, offline, minutes. Built-in stories spoken by espeak-ng, a tiny random 25 Hz HuBERT,
  faiss k-means 500, a tiny Qwen2 text LM as the TWIST source. Every stage runs for real.
- `slam`: the paper's recipe (Appendix A): 1×A5000, 24 h (23.5 h pre-training + 0.5 h DPO).
- `slam_scaled`: the same recipe on 2 GPUs for 48 h.
- `slam_large`: Qwen2.5-1.5B base with FSDP.
- `slam_interleaved`: SlamKit's interleaved speech-text path (`config/train_inter_scale.yaml`): text-only,
  interleaved and speech-only token docs mixed 0.2024 / 0.5433 / 0.2543, context 2,048, cross-modal StoryCloze.
- `smoke_interleaved`: the same path offline on CPU in minutes (espeak sTinyStories-layout shards and their timings).
- `rehearsal`: the `slam` recipe's code paths and model shapes with minute budgets and tiny corpora, for a
  dress rehearsal on one GPU (`scripts/rehearsal.py` builds its random-weight inputs and points it at them).
"""

from __future__ import annotations

from collections.abc import Callable

from slam_core import published_kmeans
from slam_core.config import (
    ConfigError, CorpusConfig, DpoConfig, EvalConfig, InterleaveConfig, ModelConfig, ParallelConfig, RunConfig,
    SlamConfig, SynthConfig, TrainConfig, UnitsConfig, VadConfig,
)

PAPER_METRICS = ["sblimp", "swuggy", "ssc", "tsc", "salmon", "generate", "genppl"]
# SlamKit config/train_inter_scale.yaml: "sample ratios such that the number of tokens matches, text only,
# interleaved, speech only" (= slam_core.lm.interleave_data.INTER_SCALE_RATIOS, by token-docs set name)
INTER_SCALE_WEIGHTS = {"text": 0.2023584112, "interleaved": 0.5433262899, "speech": 0.2543152989}


def smoke() -> SlamConfig:
    """Whole pipeline on CPU in a few minutes, no network."""
    return SlamConfig(
        run=RunConfig(name="smoke", seed=1234, device="cpu"),
        corpus=CorpusConfig(source="builtin", n_topics=8, n_train_stories=400, n_heldout_stories=128,
                            n_swag_train=96, n_swag_heldout=128),
        # One voice: the tiny random encoder is not speaker-invariant as mHuBERT is, so with four voices every word
        # had four unrelated unit spellings and the LM learned little (README, Measured: demo accuracy).
        synth=SynthConfig(backend="espeak", voices=["en-us"], stories_per_recording=6),
        vad=VadConfig(min_speech_s=1.0, max_segment_s=30.0, min_silence_s=0.8),
        # The tiny random encoder has no published quantiser: fitting one is the point here.
        units=UnitsConfig(encoder="tiny", layer=2, n_units=500, fit_kmeans=True, kmeans_sample_frames=60_000,
                          kmeans_iters=12, batch_size=16, shard_segments=128),
        # 96 wide x 3 layers trains ~2x the tokens/s of 128 x 4 on 2 cores, which mattered more (measured).
        model=ModelConfig(base="tiny-qwen2", context_len=512, dtype="float32", tiny_hidden_size=96, tiny_layers=3),
        # Bounded by steps, not by the clock: 460 steps is what 120 s gave on an idle 2-core machine, and a busy
        # one gave 67 steps and a below-chance tSC-like. The schedule is exactly 460 steps long whatever the step
        # times (a fitted one re-fitted under load and trained another model); the budget is only a generous cap.
        train=TrainConfig(budget_s=1800.0, max_steps=460, schedule_by="steps", lr=5e-3, min_lr=1.5e-4, warmup_frac=0.05,
                          micro_batch_size=8, grad_accum=1, checkpoint_every_s=30.0, log_every_steps=5,
                          calibration_steps=3),
        # The paper's 5e-5 barely moves a 0.4M-parameter model in a few steps; beta stays 0.1. Steps bound it too:
        # 60 steps are 5 passes over the 96 pairs (20 / 40 / 80 steps gave tSC-like 0.72 / 0.75 / 0.77, seed 1234).
        dpo=DpoConfig(budget_s=600.0, max_steps=60, lr=5e-4, micro_batch_size=4, grad_accum=2, warmup_steps=2),
        eval=EvalConfig(metrics=["tsc_like", "ssc_like", "generate"], n_generate=4, max_new_tokens=100,
                        allow_skip=True),
        parallel=ParallelConfig(n_gpus=0, max_workers=2),
    )


def slam() -> SlamConfig:
    """The paper: Qwen2.5-0.5B TWIST init, 1×A5000, 24 h (Appendix A)."""
    return SlamConfig(
        run=RunConfig(name="slam", seed=42, device="cuda"),
        # Speech comes from sharded sets, as in the paper: `slam synth stinystories|spokenswag --preset slam`
        # writes them here (synthesised with Kokoro, or the published SpokenSwag converted).
        # Table 4's mix: Libri-Light (1 % of files held out), LibriSpeech 960 h (dev-clean and dev-other held
        # out), sTinyStories train; validation loss is reported per held-out set, so no training document is
        # held out besides them (train.val_fraction 0).
        corpus=CorpusConfig(source="tinystories", stinystories_dir="synth/stinystories/train",
                            spokenswag_dir="synth/spokenswag/train",
                            pretrain_sets=["librilight", "librispeech", "stinystories"]),
        synth=SynthConfig(backend="kokoro", voices=["af_heart"], kokoro_model="hexgrad/Kokoro-82M"),
        vad=VadConfig(),
        # The published quantiser (as the paper, SlamKit, TWIST and the unit vocoder): converted once with
        # `slam units convert-kmeans`; a missing or different file stops the run before any work.
        units=UnitsConfig(encoder="slprl/mhubert-base-25hz", layer=11, n_units=500, batch_size=32, shard_segments=4096,
                          kmeans_path=published_kmeans.CENTROIDS_PATH, kmeans_source_sha256=published_kmeans.SHA256),
        model=ModelConfig(base="Qwen/Qwen2.5-0.5B", twist_init=True, rope_theta=10_000.0, context_len=1024,
                          dtype="bfloat16"),
        train=TrainConfig(budget_s=23.5 * 3600, lr=1e-3, min_lr=5e-5, warmup_frac=0.01, warmup_min_steps=100,
                          micro_batch_size=8, grad_accum=16, grad_clip=0.5, checkpoint_every_s=1800.0,
                          val_fraction=0.0),
        dpo=DpoConfig(budget_s=1800.0, beta=0.1, lr=5e-5, micro_batch_size=4, grad_accum=16, grad_clip=0.5),
        # GenPPL on the correct samples of sSC (paper Section 3; SlamKit asr_perplexity: 1,000 files)
        eval=EvalConfig(metrics=PAPER_METRICS, n_generate=1000, repetition_penalty=1.1, genppl_prompts="ssc",
                        vocoder="mhubert-base-25hz-kmeans-500-hifigan"),
        parallel=ParallelConfig(n_gpus=1),
    )


def slam_scaled() -> SlamConfig:
    """Slam (scaled), paper §6: the same recipe on 2 GPUs for 48 h with twice the batch, DPO for 2 epochs."""
    cfg = slam()
    cfg.run.name = "slam_scaled"
    cfg.parallel.n_gpus = 2
    cfg.train.budget_s = 47.5 * 3600
    # global: each of the 2 GPUs runs Table 4's 16 micro-batches of 8, 256 x 1024 tokens per step (2x Slam)
    cfg.train.grad_accum = 32
    cfg.dpo.max_epochs = 2.0  # "DPO training on synthetic data for 2 epochs" (9M tokens = 2 x 4.5M, Table 3 / 8)
    cfg.dpo.budget_s = 2 * 3600.0  # a cap only: 2 epochs of 47k pairs are ~1.5k steps
    return cfg


def slam_large() -> SlamConfig:
    """Qwen2.5-1.5B base, FSDP across the visible GPUs."""
    cfg = slam_scaled()
    cfg.run.name = "slam_large"
    cfg.model.base = "Qwen/Qwen2.5-1.5B"
    cfg.parallel.fsdp = True
    cfg.train.micro_batch_size = 8  # "all training details are identical" to Slam (scaled) (paper §6)
    cfg.train.grad_accum = 32
    return cfg


def rehearsal() -> SlamConfig:
    """The `slam` preset's stages, shapes and hyperparameters with budgets of a minute and small shards, so every
    stage (and a mid-run checkpoint) runs in minutes. Model and data fields keep the paper's hub ids; the
    rehearsal runner overrides them with the local stand-ins it builds (README, "Dress rehearsal")."""
    cfg = slam()
    cfg.run.name = "rehearsal"
    cfg.run.device = "auto"  # the same preset rehearses on CPU at reduced size
    # Random Kokoro weights predict ~25 frames (0.6 s) per phoneme: the sum of max_dur=50 sigmoids near 0.5.
    # Speed 7.8 gives real Kokoro's ~80 ms per phoneme, so audio (and decoder work) per text is realistic.
    cfg.synth.kokoro_speed = 7.8
    cfg.synth.shard_rows = 16
    cfg.synth.voices = ["af_heart"]
    cfg.units.shard_segments = 32
    cfg.train.budget_s = 60.0
    cfg.train.checkpoint_every_s = 30.0  # one mid-run checkpoint of the real-size optimiser state
    cfg.train.log_every_steps = 1
    cfg.train.calibration_steps = 3
    cfg.dpo.budget_s = 30.0
    cfg.eval.n_generate = 8
    cfg.eval.asr_max_tokens = 24
    return cfg


def slam_interleaved() -> SlamConfig:
    """SlamKit's `config/train_inter_scale.yaml` (slp-rl/slamkit@388b402) on the `slam` preset's data and hardware.

    From the yaml and what it includes (training_args/scaling_interleaving.yaml, data/pretrain_multi_ds.yaml,
    tokeniser/interleaved_hubert_25.yaml): context 2,048; train_ratios 0.2024 / 0.5433 / 0.2543 (text-only,
    interleaved, speech-only), repetitions 1, packing; lr 5e-4, cosine to min_lr 5e-5, warmup_ratio 0.01 and no
    100-step floor (scaling_interleaving sets no warmup_steps), max_grad_norm 0.5, per-device batch 8 with no
    accumulation, bf16, TWIST init; interleaving poisson, span 10, prob 0.3. Not followed: the yaml's
    base_model_name EleutherAI/pythia-14m with text_tokeniser_path facebook/opt-125m are placeholders overridden
    on the command line (SIMS models are Qwen2.5 and Llama-3.2); here the base is `slam`'s Qwen2.5-0.5B and the
    text vocabulary is its own tokenizer's (152,167 rows with units and markers). SlamKit trains one epoch
    (train_max_tokens null, stopping_strategy first_exhausted); here the budget is `slam`'s 23.5 h and a set that
    runs out starts a reshuffled epoch. No DPO (SlamKit has none for interleaved models).
    Data: SlamKit's yaml names none (`train_path: ???`, three pre-tokenised sets given on the command line;
    interleaved ones need per-file `aligned_text` metadata that SlamKit does not make). Here: interleaved docs
    from sTinyStories (synthesis timings) and LibriSpeech train (Whisper `interleave.asr_model` word timestamps
    matched to its transcripts), speech-only docs from every set of the `slam` mix, text-only docs from
    TinyStories text; cross-modal StoryCloze from eval.reference_path/cross_ms_tSC. Libri-Light has no
    transcripts, so it stays speech-only.
    """
    cfg = slam()
    cfg.run.name = "slam_interleaved"
    cfg.corpus.spokenswag_dir = None  # no DPO, so no SpokenSwag pairs
    cfg.model.context_len = 2048
    cfg.train = TrainConfig(budget_s=23.5 * 3600, lr=5e-4, min_lr=5e-5, warmup_frac=0.01, warmup_min_steps=0,
                            micro_batch_size=8, grad_accum=1, grad_clip=0.5, checkpoint_every_s=1800.0,
                            val_fraction=0.0, dataset_weights=dict(INTER_SCALE_WEIGHTS))
    cfg.dpo.enabled = False
    cfg.eval.metrics = []
    cfg.interleave = InterleaveConfig(enabled=True, method="poisson", span=10.0, prob=0.3,
                                      interleaved_sets=["stinystories", "librispeech"], asr_model="large-v3-turbo",
                                      cross_modal_dir="reference/cross_ms_tSC")
    return cfg


def smoke_interleaved() -> SlamConfig:
    """The interleaved path offline on CPU in minutes: the built-in stories spoken by espeak-ng into the published
    sTinyStories layout (with espeak's word timings as `aligned_text`), the smoke preset's tiny encoder and
    k-means, a byte-level BPE of 1,024 tokens trained on the stories as the tiny LM's text tokenizer, and the
    three token-docs sets mixed by SlamKit's ratios. Cross-modal StoryCloze on a stand-in spoken from the held-out
    stories. Bounded by steps, like `smoke`."""
    cfg = smoke()
    cfg.run.name = "smoke_interleaved"
    cfg.corpus.n_train_stories, cfg.corpus.n_heldout_stories = 240, 64
    cfg.corpus.stinystories_dir = "synth/stinystories/train"  # written by the flow from the built-in stories
    cfg.synth.shard_rows = 64
    cfg.train = TrainConfig(budget_s=1800.0, max_steps=240, schedule_by="steps", lr=5e-3, min_lr=1.5e-4,
                            warmup_frac=0.05, micro_batch_size=8, grad_accum=1, checkpoint_every_s=30.0,
                            log_every_steps=5, calibration_steps=3, dataset_weights=dict(INTER_SCALE_WEIGHTS))
    cfg.dpo.enabled = False
    cfg.eval = EvalConfig(metrics=[], allow_skip=True)
    # One torch thread from the token docs on: on the shared 2-core box 20 steps took 8.7 s on 1 thread and 73 s on
    # 2 (load average ~5, 2026-12-04), the same losses.
    cfg.interleave = InterleaveConfig(enabled=True, method="poisson", span=10.0, prob=0.3,
                                      interleaved_sets=["stinystories"], text_vocab_size=1024, cpu_threads=1)
    return cfg


PRESETS: dict[str, Callable[[], SlamConfig]] = {
    "smoke": smoke, "slam": slam, "slam_scaled": slam_scaled, "slam_large": slam_large, "rehearsal": rehearsal,
    "slam_interleaved": slam_interleaved, "smoke_interleaved": smoke_interleaved,
}


def get_preset(name: str) -> SlamConfig:
    """The named preset; an unknown name is a ConfigError naming the closest known one(s)."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(str(name), list(PRESETS), n=2, cutoff=0.5)
        hint = ("did you mean " + " or ".join(f"'{c}'" for c in close) + "? " if close else "") + \
            f"(known: {', '.join(PRESETS)})"
        raise ConfigError(f"unknown preset '{name}' — --preset {name} — {hint}")
    return PRESETS[name]()
