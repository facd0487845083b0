"""Prompts for generation, GenPPL and the judge: which set, which utterances, and where each is cut.

`eval.genppl_prompts` names the set:
- "ssc": the correct (positive) samples of Spoken StoryCloze under `eval.reference_path`/sSC, in pair order:
  the paper computes GenPPL on them (Section 3); the paper presets default to it;
- "peoples_speech": People's Speech test utterances, a second domain (Appendix D.3), prepared once with
  `slam data prepare peoples_speech` (segments/peoples_speech/test/, read in place from the hub's Parquet);
- "prompt_audio": any folder of audio (`eval.prompt_audio`, recursive, sorted);
- "tsc_like": the built-in pairs' positive utterances (the offline smoke preset; their units are cut, since no
  waveform is kept for them).

A file-based prompt is cut on the waveform and then encoded, as SlamKit does (`metric_utils.py`: the first
`prompt_length` seconds of audio go to the tokeniser): HuBERT is bidirectional, so the units near the cut differ
from those of the whole utterance cut afterwards. With `eval.use_alignment` and a `<file>.json` word alignment,
the cut is the end of the word closest to `prompt_s` (SlamKit's `use_alignment`). Every prompt keeps its file's
full length (`file_s`), so a metric with a minimum file length (the judge's 6 s) can select its prompts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slam_core.atomic import atomic_path
from slam_core.audio.io import list_audio_files, parse_parquet_audio_ref, probe_audio, read_segment_audio
from slam_core.eval.generate import read_alignment, word_boundary_cut_s

PROMPT_SETS = ("ssc", "peoples_speech", "prompt_audio", "tsc_like")
PEOPLES_SPEECH_SPLIT = "test"


class PromptSetError(ValueError):
    """The configured prompt set cannot be listed; the message names what is missing and how to provide it."""


@dataclass(frozen=True)
class PromptSource:
    """One prompt utterance: its id, its audio (a file, or a `<parquet>#<column>:<row>` cell), its length."""

    prompt_id: str
    audio: str
    file_s: float


def _ssc_sources(reference_path: str | None) -> list[PromptSource]:
    from slam_core.corpora.published_layout import published_sets

    if not reference_path or not (Path(reference_path) / "sSC").is_dir():
        raise PromptSetError(f"eval.genppl_prompts=ssc: no sSC folder under eval.reference_path ({reference_path}) "
                             "— set eval.reference_path to the published eval sets' root, or choose another prompt "
                             "set (eval.genppl_prompts=prompt_audio with eval.prompt_audio=DIR)")
    pairs = published_sets(reference_path, "ssc")["ssc"]
    return [PromptSource(f"sSC/{Path(p.positive.path).name}", p.positive.path, -1.0) for p in pairs]


def _peoples_speech_sources(data_root: Path) -> list[PromptSource]:
    seg_dir = Path(data_root) / "segments" / "peoples_speech" / PEOPLES_SPEECH_SPLIT
    shards = sorted(seg_dir.glob("*.parquet")) if seg_dir.is_dir() else []
    if not shards:
        raise PromptSetError(f"eval.genppl_prompts=peoples_speech: no segments in {seg_dir} — prepare them once with "
                             "`slam data prepare peoples_speech` (or --local-dir with a copy of "
                             "MLCommons/peoples_speech's test/ Parquet files)")
    rows = pq.read_table(shards, columns=["segment_id", "source_path", "start_s", "end_s"]).to_pylist()
    return [PromptSource(f"peoples_speech/{r['segment_id']}", r["source_path"], float(r["end_s"] - r["start_s"]))
            for r in sorted(rows, key=lambda r: r["segment_id"])]


def _folder_sources(folder: str | None) -> list[PromptSource]:
    if not folder or not Path(folder).expanduser().is_dir():
        raise PromptSetError(f"eval.genppl_prompts=prompt_audio: eval.prompt_audio ({folder}) is not a directory — "
                             "set eval.prompt_audio=DIR, a folder of prompt audio")
    root = Path(folder).expanduser()
    return [PromptSource(f.relative_to(root).as_posix(), str(f), -1.0) for f in list_audio_files(root)]


def prompt_sources(kind: str, eval_cfg: Any, data_root: Path, n: int | None = None) -> list[PromptSource]:
    """The first `n` (default eval_cfg.n_generate) utterances of prompt set `kind` (not "tsc_like")."""
    if kind == "ssc":
        sources = _ssc_sources(eval_cfg.reference_path)
    elif kind == "peoples_speech":
        sources = _peoples_speech_sources(data_root)
    elif kind == "prompt_audio":
        sources = _folder_sources(eval_cfg.prompt_audio)
    else:
        raise PromptSetError(f"eval.genppl_prompts={kind}: not a file-based prompt set (known: {', '.join(PROMPT_SETS)})")
    if not sources:
        raise PromptSetError(f"eval.genppl_prompts={kind}: the set has no audio")
    # lengths of files are read only for the prompts used (-1: not known from a segment row)
    return [s if s.file_s >= 0 else PromptSource(s.prompt_id, s.audio, float(probe_audio(s.audio).duration))
            for s in sources[: eval_cfg.n_generate if n is None else n]]


def cut_s(source: PromptSource, prompt_s: float, use_alignment: bool) -> tuple[float, str]:
    """(seconds kept, "word_boundary" | "fixed"): at `prompt_s`, or at the word end closest to it."""
    words = read_alignment(source.audio) if use_alignment and parse_parquet_audio_ref(source.audio) is None else None
    if words:
        return min(word_boundary_cut_s(words, prompt_s), source.file_s), "word_boundary"
    return min(prompt_s, source.file_s), "fixed"


def stamp(sources: Sequence[PromptSource]) -> list[str]:
    """What a prompt set's cache key depends on: each audio's id, size and time, and its alignment file."""
    out = []
    for s in sources:
        ref = parse_parquet_audio_ref(s.audio)
        path = Path(ref[0]) if ref else Path(s.audio)
        st = path.stat()
        align = [p for p in (path.with_suffix(path.suffix + ".json"), path.with_suffix(".json")) if p.is_file()]
        out.append(f"{s.audio}|{st.st_size}|{st.st_mtime_ns}|" + "|".join(p.read_text() for p in align[:1]))
    return out


def tokenise_prompts(sources: Sequence[PromptSource], extractor: Any, batch_size: int, out_path: str | Path,
                     prompt_s: float, use_alignment: bool) -> dict[str, Any]:
    """Units of each prompt's waveform cut at its cut time -> Parquet {segment_id, units, durations, cut_s, cut,
    file_s}, atomically; unusable audio is listed in "bad"."""
    from slam_core.eval.published import EVAL_PAIRS_UNITS
    from slam_core.units.extract import extract_items

    cuts = {s.prompt_id: cut_s(s, prompt_s, use_alignment) for s in sources}
    items = [(s.prompt_id, functools.partial(read_segment_audio, s.audio, None, cuts[s.prompt_id][0]))
             for s in sources]
    results, bad = extract_items(items, extractor, batch_size)
    kept = [s for s in sources if s.prompt_id in results]
    unit_type = EVAL_PAIRS_UNITS.field("positive_units").type
    table = pa.table({
        "segment_id": pa.array([s.prompt_id for s in kept], pa.string()),
        "units": pa.array([np.asarray(results[s.prompt_id][0], np.uint16) for s in kept], unit_type),
        "durations": pa.array([np.asarray(results[s.prompt_id][1], np.uint16) for s in kept], unit_type),
        "cut_s": pa.array([round(cuts[s.prompt_id][0], 3) for s in kept], pa.float32()),
        "cut": pa.array([cuts[s.prompt_id][1] for s in kept], pa.string()),
        "file_s": pa.array([round(s.file_s, 3) for s in kept], pa.float32())})
    with atomic_path(Path(out_path), suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return {"path": str(out_path), "rows": len(kept), "tokens": sum(len(results[s.prompt_id][0]) for s in kept),
            "audio_seconds": sum(cuts[s.prompt_id][0] for s in kept), "bad": bad}


def prompts_from_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Generation prompts from `tokenise_prompts` rows: the units of the cut waveform, whole."""
    return [{"pair_id": r["segment_id"], "cut_s": r["cut_s"], "cut": r["cut"], "file_s": r["file_s"],
             "prompt_units": [int(u) for u in r["units"]]} for r in rows]
