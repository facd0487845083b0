"""The `interleave` config section: SlamKit's interleaved speech-text path (SIMS), off in the speech-only presets.

SlamKit (slp-rl/slamkit@388b402): `config/tokeniser/interleaved_hubert_25.yaml` (interleave_method poisson,
interleave_span 10, interleave_prob 0.3, word alignments required) and `config/train_inter_scale.yaml` (three
training sets, text-only / interleaved / speech-only, mixed by sample ratios 0.2024 / 0.5433 / 0.2543, context
2,048). Here the three sets are token-docs shards named `text`, `interleaved` and `speech`, so the ratios are
`train.dataset_weights` by those names (`slam_core.lm.interleave_data.INTER_SCALE_RATIOS`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slam_core.config_sections import _Section

CROSS_MODAL_METRICS = ("cm_tsc_t2s", "cm_tsc_s2t", "cm_tsc_t2t", "cm_tsc_s2s")
CM_GENERATE = "cm_generate"  # speech prompt -> text continuation (slam_core.eval.cm_generate)
DOC_KINDS = ("text", "interleaved", "speech")
# Sets whose audio Parquet shards carry the synthesiser's own word timings (`aligned_text`); every other set is
# timed by Whisper.
SYNTH_ALIGNED_SETS = ("stinystories", "stories")


class InterleaveConfig(_Section):
    enabled: bool = Field(False, description="Train an interleaved speech-text LM (SlamKit's SIMS path): word "
                          "alignments -> interleaved, speech-only and text-only token docs -> TWIST init keeping the "
                          "text vocabulary -> pre-training on the mix -> cross-modal StoryCloze. False: speech only.")
    method: Literal["poisson", "span", "random"] = Field(
        "poisson", description="Which words are spoken (SlamKit interleave_method): Poisson spans, fixed spans, or "
        "each word at random with probability 0.5.")
    span: float = Field(10.0, gt=0, description="Mean (poisson) or fixed (span) length of a speech span in words.")
    prob: float = Field(0.3, gt=0, le=1, description="Share of words in speech (poisson) / span start probability.")
    interleaved_sets: list[str] = Field(
        ["stinystories"], description="Unit datasets (units/<set>/) whose word alignments make interleaved docs; "
        "sTinyStories is aligned from its synthesis timings, any other set (LibriSpeech) by Whisper word "
        "timestamps matched to its transcripts (interleave.asr_model).")
    asr_model: str = Field(
        "large-v3-turbo", description="Whisper that times the words of real speech (interleaved sets other than "
        "sTinyStories): an openai-whisper name, read from ~/.cache/whisper (large-v3-turbo: the weights of "
        "SlamKit's openai/whisper-large-v3-turbo), or a local checkpoint file {'dims', 'model_state_dict'}. "
        "Not loaded when every interleaved set is synthesised.")
    asr_max_tokens: int | None = Field(
        None, ge=1, description="Cap on the tokens Whisper decodes per 30 s window while aligning (None: "
        "Whisper's own, half its text context); a cap cuts a long segment's transcript short, leaving its last "
        "words unaligned.")
    cpu_threads: int | None = Field(
        None, ge=1, description="Torch threads of the one-model stages on CPU (token docs, pre-training, cross-modal "
        "evaluation); None: every core. On a shared 2-core machine a tiny model trains ~8x faster on 1 thread "
        "than on 2 (OpenMP threads wait on each other: README, interleaved Measured).")
    speech_sets: list[str] = Field(
        [], description="Unit datasets whose units are also speech-only docs; empty: every pre-training set.")
    text_vocab_size: int = Field(1024, ge=260, description="'tiny-qwen2' only: size of the byte-level BPE trained "
                                 "on the run's own stories as the stand-in text tokenizer (at most the tiny LM's "
                                 "1,024 embedding rows).")
    cross_modal_dir: str | None = Field(
        None, description="Published cross-modal StoryCloze layout (SlamKit's cross_ms_tSC: {base}_mutual/_correct/"
        "_incorrect .wav + .txt); relative to the data root unless absolute. None: a stand-in spoken by synth.backend "
        "from the held-out stories (prompt: all but the last sentence; endings: its own and another topic's).")
    cross_modal_metrics: list[Literal["cm_tsc_t2s", "cm_tsc_s2t", "cm_tsc_t2t", "cm_tsc_s2s", "cm_generate"]] = Field(
        [*CROSS_MODAL_METRICS, CM_GENERATE], description="Cross-modal metrics: cm_tsc_<p>2<e> = StoryCloze with the "
        "prompt -> ending in those modalities (t: text, s: speech); cm_generate = text continuations of spoken "
        "prompts (SlamKit's cm_generate), recorded as cm_generate_genppl (under eval.ppl_lm) and "
        "cm_generate_auto_bleu.")
    max_cross_modal_items: int | None = Field(None, ge=1, description="Cap on cross-modal items scored (None: all).")
    cm_generate_prompts: int = Field(
        5, ge=1, description="cm_generate: prompts, the `_mutual.wav` of the first items of the cross-modal layout "
        "(sorted); SlamKit cm_generate.yaml num_files 5.")
    cm_generate_prompt_s: float = Field(
        3.0, gt=0, description="cm_generate: seconds of each prompt wav kept, cut on the waveform before encoding "
        "(SlamKit prompt_length 3, no word alignment).")
    cm_generate_temperature: float = Field(0.8, gt=0, description="cm_generate: sampling temperature (SlamKit 0.8).")
    cm_generate_top_k: int = Field(25, ge=1, description="cm_generate: top-k sampling (SlamKit 25; no top-p).")
    cm_generate_max_new_tokens: int = Field(
        150, ge=1, description="cm_generate: text tokens sampled at most per prompt, stopping at EOS (SlamKit 150).")

    def alignment_method(self, dataset: str) -> str:
        """'synth' (timings stored by synthesis) or 'asr' (Whisper word timestamps) for a unit dataset."""
        return "synth" if dataset in SYNTH_ALIGNED_SETS else "asr"

    @property
    def asr_sets(self) -> list[str]:
        """The interleaved sets that Whisper aligns (enabled presets only)."""
        return [s for s in self.interleaved_sets if self.alignment_method(s) == "asr"] if self.enabled else []

    @model_validator(mode="after")
    def _check_sets(self) -> "InterleaveConfig":
        if self.enabled and not self.interleaved_sets:
            raise ValueError("interleave.interleaved_sets: name at least one unit dataset to interleave")
        return self
