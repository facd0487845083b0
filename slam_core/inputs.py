"""Inputs a run needs but does not make, checked before any work (beside the resource preflight).

- The quantiser: `units.kmeans_path` must exist and, with `units.kmeans_source_sha256` (paper presets: the
  published mHuBERT-25Hz km500 file's), come from that exact pickle (full sha256, via the record `slam units
  convert-kmeans` writes). Never skippable: fitting a new k-means is the explicit `units.fit_kmeans=true`.
- Speech and text named by path (`corpus.*_dir`): checked to exist, so a mistyped path stops the run at once.
- The Whisper that aligns real speech for interleaving (`interleave.asr_model`), when an interleaved set is not
  synthesised (LibriSpeech in `slam_interleaved`).
- Evaluation inputs of the configured metrics: reference sets (`eval.reference_path`), unit vocoder, Whisper
  model, GenPPL text LM (also of an interleaved preset's `cm_generate`), judge, prompt audio. Missing ones stop
  the run with one message naming each and the option that provides it, unless `eval.allow_skip=true` (the
  smoke preset), which runs and records them as skipped (the report lists them).

`missing_inputs(cfg)` only inspects; `slam plan` can show its result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from slam_core.config import SlamConfig
from slam_core.config_interleave import CM_GENERATE
from slam_core.corpora.published_layout import PUBLISHED_METRICS, find_set_dir
from slam_core.errors import InputError
from slam_core.offline import offline, offline_variable
from slam_core.preflight import PreflightError

log = logging.getLogger(__name__)

VOCODER_METRICS = {"genppl", "judge"}


class InputsMissingError(PreflightError):
    """Inputs the run needs are missing; the message names each and the option that provides it."""


@dataclass(frozen=True)
class MissingInput:
    stage: str   # corpus | units | eval
    what: str    # e.g. "GenPPL text LM"
    field: str   # the config field (or command) that provides it
    detail: str  # what was found, and how to fix it

    def line(self) -> str:
        return f"{self.what} — {self.field} — {self.detail}"


def quantizer_inputs(cfg: SlamConfig) -> list[MissingInput]:
    if cfg.units.fit_kmeans or not cfg.units.kmeans_path:
        return []
    from slam_core import published_kmeans
    from slam_core.units.quantizer import KmeansError, verify_centroids_source

    path = cfg.kmeans_file
    if cfg.units.kmeans_source_sha256:
        try:
            verify_centroids_source(path, cfg.units.kmeans_source_sha256)
        except KmeansError as err:
            return [MissingInput("units", "k-means centroids", "units.kmeans_path", str(err))]
    elif not path.is_file():
        return [MissingInput("units", "k-means centroids", "units.kmeans_path",
                             f"{path} not found — {published_kmeans.convert_command(str(path))}, or opt in to a new "
                             "k-means with units.kmeans_path=null units.fit_kmeans=true")]
    return []


def _hub_or_local_available(name: str) -> str | None:
    """None when `name` is a local directory/file or a hub id in the HF cache (or downloads are allowed); else why."""
    if Path(name).expanduser().exists():
        return None
    if name.startswith(("/", ".", "~")):
        return f"{name} does not exist"
    if not offline():
        return None  # downloaded on first use
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return None
    return f"'{name}' is not in the Hugging Face cache and {offline_variable()} is set"


def _asr_available(name: str) -> str | None:
    if Path(name).expanduser().is_file():
        return None
    import whisper

    if name not in whisper._MODELS:
        return f"'{name}' is neither a file nor an openai-whisper model name"
    from slam_core.eval.asr import _whisper_cache_dir

    cached = _whisper_cache_dir() / Path(whisper._MODELS[name]).name
    if cached.is_file() or not offline():
        return None
    return f"{cached} not found and downloads are off ({offline_variable()} is set)"


def eval_inputs(cfg: SlamConfig) -> list[MissingInput]:
    """Missing inputs of the configured metrics (nothing is loaded; files and caches are looked at)."""
    ev, metrics, out = cfg.eval, set(cfg.eval.metrics), []
    wanted_sets = list(dict.fromkeys(name for m in sorted(metrics & set(PUBLISHED_METRICS))
                                     for name in PUBLISHED_METRICS[m]))
    if wanted_sets:
        if not ev.reference_path:
            out.append(MissingInput("eval", "reference sets", "eval.reference_path", "not set: the root of the "
                                    f"published sets in SlamKit's layout, needed by {', '.join(wanted_sets)}"))
        else:
            for name in wanted_sets:
                try:
                    find_set_dir(Path(ev.reference_path).expanduser(), name)
                except FileNotFoundError as err:
                    out.append(MissingInput("eval", f"reference set {name}", "eval.reference_path", str(err)))
    if metrics & VOCODER_METRICS:
        from slam_core.eval.vocoder import VocoderNotFoundError, resolve_vocoder_files

        if not ev.vocoder:
            out.append(MissingInput("eval", "unit vocoder", "eval.vocoder", "not set: the textlesslib "
                                    "hifigan_lj_mhubert_base_25hz.pt and its config JSON"))
        else:
            try:
                resolve_vocoder_files(ev.vocoder)
            except VocoderNotFoundError as err:
                out.append(MissingInput("eval", "unit vocoder", "eval.vocoder", str(err)))
        if (why := _asr_available(ev.asr_model)) is not None:
            out.append(MissingInput("eval", "Whisper ASR model", "eval.asr_model", why))
    if "genppl" in metrics and (why := _hub_or_local_available(ev.ppl_lm)) is not None:
        out.append(MissingInput("eval", "GenPPL text LM", "eval.ppl_lm", why))
    if (cfg.interleave.enabled and CM_GENERATE in cfg.interleave.cross_modal_metrics and "genppl" not in metrics
            and (why := _hub_or_local_available(ev.ppl_lm)) is not None):  # scores the generated continuations
        out.append(MissingInput("eval", "GenPPL text LM of cm_generate", "eval.ppl_lm", why))
    if "judge" in metrics:
        if not (ev.judge_model or ev.judge_endpoint):
            out.append(MissingInput("eval", "judge", "eval.judge_model / eval.judge_endpoint", "not set"))
        elif ev.judge_model and not ev.judge_endpoint and (why := _hub_or_local_available(ev.judge_model)):
            out.append(MissingInput("eval", "judge", "eval.judge_model", why))
    if metrics & (VOCODER_METRICS | {"generate"}) and ev.genppl_prompts != "tsc_like":
        from slam_core.eval.prompts import PromptSetError, prompt_sources

        try:
            prompt_sources(ev.genppl_prompts, ev, cfg.data_root, n=1)
        except PromptSetError as err:
            field = "eval.prompt_audio" if ev.genppl_prompts == "prompt_audio" else "eval.genppl_prompts"
            out.append(MissingInput("eval", "prompt audio", field, str(err)))
    return out


def corpus_inputs(cfg: SlamConfig) -> list[MissingInput]:
    """Speech and text the config names by path: sTinyStories and SpokenSwag shards, local copies of TinyStories,
    SWAG, LibriSpeech and Libri-Light. Relative paths are under the data root (nothing is created)."""
    from slam_core.corpora.hub import list_parquet_files
    from slam_core.data_mix import configured_path

    c, out = cfg.corpus, []
    uses_stories = "stinystories" in c.pretrain_sets if c.pretrain_sets else bool(c.stinystories_dir)
    # the interleaved path speaks the built-in corpus into these shards itself (flows/interleaved.py)
    speaks_them = cfg.interleave.enabled and c.source == "builtin"
    if uses_stories and c.stinystories_dir and not speaks_them:
        root = configured_path(cfg, c.stinystories_dir)
        if not (root.is_dir() and list_parquet_files(root)):
            out.append(MissingInput("corpus", "sTinyStories shards", "--set corpus.stinystories_dir",
                                    f"no *.parquet under {root}: make them with `slam synth stinystories --input "
                                    f"TINYSTORIES_DIR --preset {cfg.run.name}`, or point it at your copy"))
    if c.spokenswag_dir:
        root = configured_path(cfg, c.spokenswag_dir)
        if not (root.is_dir() and any(root.glob("preferences-*.parquet"))):
            out.append(MissingInput("corpus", "SpokenSwag shards", "--set corpus.spokenswag_dir",
                                    f"no preferences-*.parquet in {root}: make them with `slam synth spokenswag "
                                    f"--input SWAG_DIR --preset {cfg.run.name}`, or point it at a folder that "
                                    f"holds them"))
    local = [("TinyStories text", "tinystories_local_dir", c.source == "tinystories",
              "a folder of TinyStories *.parquet (with 'text') or *.txt"),
             ("SWAG text", "swag_local_dir", c.source == "tinystories",
              "the official SWAG train.csv / val.csv (rowanz/swagaf) or a folder of them (or the hub's Parquet)"),
             ("LibriSpeech copy", "librispeech_dir", "librispeech" in c.pretrain_sets,
              "a folder holding LibriSpeech/<part>/ (or unset it to download from OpenSLR)"),
             ("Libri-Light copy", "librilight_dir", "librilight" in c.pretrain_sets,
              "a folder holding <subset>/<speaker>/<book>/*.flac + .json (or unset it to download)")]
    for what, name, used, expected in local:
        value = getattr(c, name)
        if used and value and not Path(value).expanduser().exists():
            out.append(MissingInput("corpus", what, f"--set corpus.{name}",
                                    f"{value} does not exist: give {expected}"))
    return out


SYNTH_INPUTS = {
    "spokenswag": "the official SWAG train.csv / val.csv (rowanz/swagaf) or a folder of them, the hub's SWAG Parquet, "
                  "TRIPLES Parquet, or a published SpokenSwag folder",
    "stinystories": "a TinyStories folder (*.parquet with 'text', or *.txt), a TinyStories file or STORIES Parquet",
}


def check_synth_input(kind: str, path: str | Path, where: str = "--input") -> None:
    """The text (or speech) `slam synth <kind>` reads exists; else one InputError saying what to give."""
    if not Path(path).expanduser().exists():
        raise InputError(f"{kind} input not found", f"{where} {path}",
                         f"give {SYNTH_INPUTS.get(kind, 'an existing file or folder')}")


def alignment_inputs(cfg: SlamConfig) -> list[MissingInput]:
    """The Whisper that aligns the real-speech interleaved sets (interleave.asr_sets), checked with the units: the
    interleaved flow aligns right after them, so a missing model would otherwise stop it hours in."""
    icfg = cfg.interleave
    if not icfg.asr_sets or (why := _asr_available(icfg.asr_model)) is None:
        return []
    return [MissingInput("units", f"Whisper for the word alignments of {', '.join(icfg.asr_sets)}",
                         "--set interleave.asr_model", f"{why}: put the official file there, or give a local "
                         "checkpoint file ({'dims', 'model_state_dict'}) as interleave.asr_model=PATH")]


def missing_inputs(cfg: SlamConfig, stages: tuple[str, ...] = ("units", "eval")) -> list[MissingInput]:
    return ((corpus_inputs(cfg) if "corpus" in stages else [])
            + (quantizer_inputs(cfg) + alignment_inputs(cfg) if "units" in stages else [])
            + (eval_inputs(cfg) if "eval" in stages else []))


def check_inputs(cfg: SlamConfig, stages: tuple[str, ...] = ("units", "eval")) -> list[MissingInput]:
    """Raise InputsMissingError naming every missing input of `stages`; with eval.allow_skip, missing evaluation
    inputs are logged and returned (their metrics will be recorded as skipped) instead."""
    missing = missing_inputs(cfg, stages)
    fatal = [m for m in missing if m.stage != "eval" or not cfg.eval.allow_skip]
    if fatal:
        skip_hint = ("\nTo run anyway and record those metrics as skipped: --set eval.allow_skip=true"
                     if any(m.stage == "eval" for m in fatal) else "")
        raise InputsMissingError("missing inputs, stopped before any work:\n  " +
                                 "\n  ".join(m.line() for m in fatal) + skip_hint)
    for m in missing:
        log.warning("eval.allow_skip: %s (its metrics will be recorded as skipped)", m.line())
    return missing
