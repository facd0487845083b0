"""Cross-modal StoryCloze for interleaved LMs (SlamKit's `cm_storycloze`, `config/metric/cm_ms_tsc.yaml`).

Layout (SlamKit's `cross_ms_tSC/`, one sub-folder level): `{base}_mutual` (the shared prompt), `{base}_correct`,
`{base}_incorrect`, each as `.wav` and `.txt`. Items are listed from the `*_correct.wav` files, sorted (SlamKit
takes directory order). `tokenise_cross_modal` runs the three wavs of every item through the units stage's
extraction (`slam_core.units.extract.extract_items`) and keeps the texts, so one Parquet serves every modality
pair; `write_cross_modal_layout` writes the layout from (prompt, correct, incorrect) texts and a voice, the
offline stand-in for the published set.

Scoring is SlamKit's: the prompt in one modality, the ending in another, one sequence per side
(`[BOS, <text> prompt, <speech> ending, EOS]` for text -> speech), the mean log-prob of all targets after BOS
(no prompt / ending split), 1 when the correct side scores higher, 0.5 on a tie. Text after text is joined with
a space (SlamKit concatenates the strings as they are); speech after speech joins the two unit runs (SlamKit
encodes the joined waves; here each wav is tokenised alone and a unit repeated across the joint is merged, as
deduplication would).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import torch

from slam_core.atomic import atomic_path, write_bytes_atomic, write_text_atomic
from slam_core.audio.io import TARGET_SAMPLE_RATE_HZ, read_audio
from slam_core.eval.pairs import pair_outcomes, score_sequences, wilson_interval
from slam_core.lm.interleave import InterleavingTokenizer

log = logging.getLogger(__name__)

PARTS = ("mutual", "correct", "incorrect")
MODALITIES = ("text", "speech")
UNITS = pa.list_(pa.uint16())
CROSS_MODAL_UNITS = pa.schema([("item_id", pa.string())] + [(f"{p}_text", pa.string()) for p in PARTS]
                              + [(f"{p}_units", UNITS) for p in PARTS])


def metric_name(prompt_modality: str, cont_modality: str) -> str:
    """'cm_tsc_t2s' for a text prompt with spoken endings, and so on."""
    for m in (prompt_modality, cont_modality):
        if m not in MODALITIES:
            raise ValueError(f"modality {m!r}: expected one of {', '.join(MODALITIES)}")
    return f"cm_tsc_{prompt_modality[0]}2{cont_modality[0]}"


def list_cross_modal(root: str | Path) -> list[tuple[str, Path]]:
    """(item id, base path without the `_correct.wav` suffix) of every complete item under `root` or its
    sub-folders, sorted; an item missing any of its six files is an error naming it."""
    root = Path(root)
    found = sorted(root.glob("*_correct.wav")) + sorted(root.glob("*/*_correct.wav"))
    if not found:
        raise FileNotFoundError(f"{root}: no *_correct.wav files (cross-modal StoryCloze layout: {{base}}_mutual, "
                                "{base}_correct, {base}_incorrect, each .wav + .txt)")
    items = []
    for f in found:
        base = Path(str(f)[: -len("_correct.wav")])
        missing = [f"{base.name}_{p}{s}" for p in PARTS for s in (".wav", ".txt")
                   if not Path(f"{base}_{p}{s}").is_file()]
        if missing:
            raise FileNotFoundError(f"{base.parent}: item {base.name} lacks {', '.join(missing)}")
        items.append((base.relative_to(root).as_posix(), base))
    return items


def write_cross_modal_layout(items: Sequence[tuple[str, str, str, str]], speak: Callable[[str], np.ndarray],
                             out_dir: str | Path) -> Path:
    """(item id, prompt, correct ending, incorrect ending) texts -> the cross-modal layout under out_dir/<set>/,
    spoken by `speak` (text -> 16 kHz mono float32)."""
    folder = Path(out_dir) / "stand_in"
    for item_id, *texts in items:
        for part, text in zip(PARTS, texts):
            write_bytes_atomic(folder / f"{item_id}_{part}.wav", _wav_bytes(speak(text)))
            write_text_atomic(folder / f"{item_id}_{part}.txt", text + "\n")
    return Path(out_dir)


def _wav_bytes(wave: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, np.asarray(wave, np.float32), TARGET_SAMPLE_RATE_HZ, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def tokenise_cross_modal(root: str | Path, extractor: Any, batch_size: int, out_path: str | Path) -> dict[str, Any]:
    """Units of every item's three wavs + its three texts -> CROSS_MODAL_UNITS Parquet, atomically. An item with an
    unusable wav is left out and listed in "bad" as (item/part, reason, detail)."""
    from slam_core.units.extract import extract_items

    items = list_cross_modal(root)
    loads = [(f"{item_id}/{p}", functools.partial(read_audio, Path(f"{base}_{p}.wav")))
             for item_id, base in items for p in PARTS]
    results, bad = extract_items(loads, extractor, batch_size)
    kept = [(i, b) for i, b in items if all(f"{i}/{p}" in results for p in PARTS)]
    columns: dict[str, pa.Array] = {"item_id": pa.array([i for i, _ in kept], pa.string())}
    for p in PARTS:
        columns[f"{p}_text"] = pa.array([Path(f"{b}_{p}.txt").read_text().strip() for _, b in kept], pa.string())
    for p in PARTS:
        columns[f"{p}_units"] = pa.array([np.asarray(results[f"{i}/{p}"][0], np.uint16) for i, _ in kept], UNITS)
    table = pa.Table.from_arrays([columns[n] for n in CROSS_MODAL_UNITS.names], schema=CROSS_MODAL_UNITS)
    with atomic_path(Path(out_path), suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    tokens = sum(len(results[f"{i}/{p}"][0]) for i, _ in kept for p in PARTS)
    audio_s = sum(results[f"{i}/{p}"][3] for i, _ in kept for p in PARTS)
    return {"path": str(out_path), "rows": len(kept), "tokens": tokens, "audio_seconds": audio_s, "bad": bad}


def item_sequences(tok: InterleavingTokenizer, row: dict[str, Any], prompt_modality: str,
                   cont_modality: str) -> tuple[np.ndarray, np.ndarray]:
    """The correct and incorrect sequence of one item with the prompt and ending in the given modalities."""
    metric_name(prompt_modality, cont_modality)  # checks the modalities
    v = tok.vocab

    def side(part: str) -> np.ndarray:
        if prompt_modality == cont_modality == "text":
            return tok.encode_text(f"{row['mutual_text']} {row[f'{part}_text']}")
        if prompt_modality == cont_modality == "speech":
            prompt, ending = list(row["mutual_units"]), list(row[f"{part}_units"])
            if prompt and ending and prompt[-1] == ending[0]:
                ending = ending[1:]
            return tok.encode_speech(prompt + ending)
        if prompt_modality == "text":
            body = [v.text_id] + tok.text_ids(row["mutual_text"]) + [v.speech_id] + tok.unit_ids(row[f"{part}_units"])
        else:
            body = ([v.speech_id] + tok.unit_ids(row["mutual_units"]) + [v.text_id]
                    + tok.text_ids(" " + row[f"{part}_text"]))
        return np.array([v.bos_id] + body + [v.eos_id], np.int64)

    return side("correct"), side("incorrect")


def evaluate_cross_modal(model: torch.nn.Module, tok: InterleavingTokenizer, rows: Sequence[dict[str, Any]],
                         prompt_modality: str, cont_modality: str, batch_size: int = 16,
                         device: torch.device | str = "cpu") -> dict[str, Any]:
    """Accuracy of the correct ending over the incorrect one, with a 95 % Wilson interval and per-item scores."""
    name = metric_name(prompt_modality, cont_modality)
    if not rows:
        raise ValueError(f"{name}: no items to score")
    pairs = [item_sequences(tok, r, prompt_modality, cont_modality) for r in rows]
    scores = score_sequences(model, [p for p, _ in pairs] + [n for _, n in pairs], batch_size, device)
    pos, neg = scores[: len(rows)], scores[len(rows):]
    outcomes = pair_outcomes(pos, neg)
    low, high = wilson_interval(float(outcomes.sum()), len(rows))
    log.info("%s: accuracy %.4f on %d items", name, outcomes.mean(), len(rows))
    return {"metric": name, "accuracy": float(outcomes.mean()), "n": len(rows), "ci_low": low, "ci_high": high,
            "per_pair": [{"pair_id": r["item_id"], "pos": float(p), "neg": float(q)}
                         for r, p, q in zip(rows, pos, neg)]}


def read_cross_modal(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CROSS_MODAL_UNITS Parquet file."""
    table = pq.read_table(path)
    missing = [c for c in CROSS_MODAL_UNITS.names if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not a CROSS_MODAL_UNITS file, missing columns {missing}")
    return table.to_pylist()
