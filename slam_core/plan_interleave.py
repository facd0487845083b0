"""`slam plan` lines of the interleaved path (`interleave.enabled`): the word alignments of each interleaved set and
the token docs of the three sets, each with its ETA and basis (`slam_core.plan` adds them after k-means).

- Word alignments of a synthesised set (sTinyStories) are a Parquet read of the synthesiser's `aligned_text`
  matched to the transcript: no model, priced at the rate measured on the 2-core development CPU.
- Word alignments of real speech (LibriSpeech) are Whisper word timestamps: GPU-hours from a measured rate of
  `interleave.asr_model` (`slam_core.measured_rates.whisper_align_rate`); none has been measured, so the line says
  "unmeasured" and the stage is left out of the total rather than priced by a guess.
- Token docs are CPU work (tokenising, no model): unit tokens of the speech-only and interleaved docs at the
  measured CPU rate; the text docs' size is not known before the stories are tokenised, so they are not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slam_core.config import SlamConfig
from slam_core.measured_rates import SYNTH_ALIGN_CPU, TOKEN_DOCS_CPU, MeasuredRate, whisper_align_rate

# A one-GPU measured rate -> (its x real time on the plan's device, the basis said): `slam_core.plan._scale_to`.
Scale = Callable[[MeasuredRate], tuple[float, str]]


def _train_sets(sets: list[dict[str, Any]], names: list[str] | None = None) -> dict[str, dict[str, float]]:
    """name -> {hours, tokens} of the training sets (all of them, or those named)."""
    out: dict[str, dict[str, float]] = {}
    for s in sets:
        if s["role"] == "train" and (names is None or s["name"] in names):
            row = out.setdefault(s["name"], {"hours": 0.0, "tokens": 0.0})
            row["hours"] += s["hours"]
            row["tokens"] += s["tokens"]
    return out


def alignment_stages(cfg: SlamConfig, sets: list[dict[str, Any]], scale: Scale) -> list[dict[str, Any]]:
    """One stage per interleaved set: synthesis timings (a Parquet read) or Whisper (GPU-hours on the measuring
    GPU; the ETA on the plan's device), or unmeasured."""
    icfg, out = cfg.interleave, []
    for name, size in _train_sets(sets, icfg.interleaved_sets).items():
        hours = size["hours"]
        if icfg.alignment_method(name) == "synth":
            rate = SYNTH_ALIGN_CPU
            out.append({"name": f"word alignments: {name}", "eta_s": hours * 3600 / rate.x_realtime, "hours": hours,
                        "method": "synth", "gpu_hours": 0.0,
                        "basis": f"a Parquet read of the synthesis timings (aligned_text), no model: "
                                 f"{rate.x_realtime:,.0f}x real time measured on the {rate.device} ({rate.date})"})
            continue
        rate = whisper_align_rate(icfg.asr_model)
        row = {"name": f"word alignments: {name}", "hours": hours, "method": "asr", "asr_model": icfg.asr_model}
        if rate is None:
            row |= {"eta_s": None, "gpu_hours": None, "measured": None,
                    "basis": f"Whisper {icfg.asr_model} word timestamps on {hours:,.0f} h of speech: GPU rate "
                             "unmeasured (no measurement of Whisper alignment yet), not counted"}
        else:
            x_realtime, basis = scale(rate)
            row |= {"eta_s": hours * 3600 / x_realtime, "gpu_hours": round(hours / rate.x_realtime, 2),
                    "measured": rate.as_dict(),
                    "basis": f"Whisper {icfg.asr_model} word timestamps at {x_realtime:,.0f}x real time, {basis}"}
        out.append(row)
    return out


def token_docs_stage(cfg: SlamConfig, sets: list[dict[str, Any]]) -> dict[str, Any]:
    """The token-docs stage: unit tokens of the speech-only docs (every training set, or interleave.speech_sets)
    and of the interleaved docs at the measured CPU rate; the text docs not counted."""
    icfg, rate = cfg.interleave, TOKEN_DOCS_CPU
    speech = sum(s["tokens"] for s in _train_sets(sets, icfg.speech_sets or None).values())
    inter = sum(s["tokens"] for s in _train_sets(sets, icfg.interleaved_sets).values())
    return {"name": "token docs", "eta_s": (speech + inter) / rate["tokens_per_s"],
            "speech_unit_tokens": speech, "interleaved_unit_tokens": inter,
            "basis": f"{speech + inter:,.0f} unit tokens (speech-only docs + the interleaved sets' units, an upper "
                     f"bound for them: their text spans are fewer tokens) at {rate['tokens_per_s']:,.0f} tokens/s "
                     f"on one thread, measured on the {rate['device']} with the tiny stand-in's tokenizer "
                     f"({rate['date']}); text docs not counted (their size is known once the stories are tokenised)"}


def interleave_stages(cfg: SlamConfig, sets: list[dict[str, Any]], scale: Scale) -> list[dict[str, Any]]:
    """The alignment and token-docs stages of an interleaved preset ([] for the speech-only ones)."""
    if not cfg.interleave.enabled:
        return []
    return [*alignment_stages(cfg, sets, scale), token_docs_stage(cfg, sets)]


def alignment_cost(plan_stages: list[dict[str, Any]]) -> dict[str, Any]:
    """The alignment part of `preprocessing`: audio hours Whisper aligns, its GPU-hours (None: unmeasured)."""
    whisper = [s for s in plan_stages if s.get("method") == "asr"]
    hours = sum(s["hours"] for s in whisper)
    unmeasured = [s["name"] for s in whisper if s["gpu_hours"] is None]
    return {"audio_hours": round(hours, 1),
            "gpu_hours": None if unmeasured else round(sum(s["gpu_hours"] for s in whisper), 2),
            "unmeasured": unmeasured,
            "note": ("Whisper alignment rate unmeasured: not in the total" if unmeasured else
                     "Whisper word timestamps at the measured rate") if whisper else "nothing for Whisper to align"}
