"""SpokenSwag: SWAG preference triples (TRIPLES) spoken into PREFERENCE_AUDIO shards, and the published
slprl/SpokenSwag converted into the same format.

Both paths apply SlamKit's repetition filter (`config/data/preference_alignment_data.yaml`: `repetition_filter:
true`, `auto_bleu_n: 2`, `max_auto_bleu: 0.3`; `slamkit/data/hf_dataset.py:get_repetition_filter_fn`, slp-rl/slamkit
@388b402): a pair is kept iff the bigram auto-BLEU of `prompt_text + " " + chosen_text` is below the threshold
(`corpus.swag_max_auto_bleu`). SWAG triples are filtered before they are spoken (`text_hub.build_swag_triples`);
the published set, which SlamKit filters when its DPO loader reads it, is filtered here while it is converted:
each dropped pair is quarantined with reason "repetitive" and its score, so the catalog counts them.

One row per pair: prompt, chosen and rejected each spoken separately (16 kHz FLAC bytes) with one voice drawn
per row from (seed, pair id), as SlamKit's `create_spoken_swag` does with Kokoro voices af_heart, am_fenrir,
bf_emma and bm_george (two female, two male, American and British) - but seeded. Text is normalised before
speaking; the stored text is the original triple text. A pair with any unspeakable part is skipped and counted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from slam_core.atomic import atomic_path
from slam_core.audio.io import BadAudioError, decode_audio_bytes, encode_flac
from slam_core.config import SynthConfig
from slam_core.corpora.text_hub import AUTO_BLEU_N, REPETITIVE, repetition_score
from slam_core.schemas import PREFERENCE_AUDIO
from slam_core.synth.dataset import pick_voice, speaker_name
from slam_core.synth.shards import cached_backend, speak_many_16k
from slam_core.synth.text_norm import normalise_text

log = logging.getLogger(__name__)

KOKORO_SPOKENSWAG_VOICES = ("af_heart", "am_fenrir", "bf_emma", "bm_george")
PARTS = ("prompt", "chosen", "rejected")


def spokenswag_voices(cfg: SynthConfig) -> list[str]:
    """`synth.spokenswag_voices`, else the paper's four Kokoro voices (kokoro) or `synth.voices` (espeak)."""
    if cfg.spokenswag_voices:
        return list(cfg.spokenswag_voices)
    return list(KOKORO_SPOKENSWAG_VOICES) if cfg.backend == "kokoro" else list(cfg.voices)


def read_triples(path: str | Path, split: str | None = None, limit: int | None = None) -> list[dict]:
    """TRIPLES rows of a Parquet file (one split, or all), at most `limit`."""
    rows = pq.read_table(path).to_pylist()
    need = {"pair_id", "prompt_text", "chosen_text", "rejected_text"}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"{path}: not a TRIPLES table (need {sorted(need)}; found {sorted(rows[0])})")
    rows = [r for r in rows if split is None or r.get("split") == split]
    return rows[:limit] if limit is not None else rows


def _write(rows: list[dict], out_path: str | Path) -> None:
    with atomic_path(Path(out_path)) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=PREFERENCE_AUDIO), tmp, compression="zstd")


def synthesize_spokenswag_shard(triples: list[dict], cfg: SynthConfig, voices: list[str], seed: int,
                                out_path: str | Path) -> dict:
    """Speak one shard of triples into PREFERENCE_AUDIO Parquet (atomic). Returns {"path", "rows",
    "audio_seconds", "bad"}; bad lists (pair_id, reason, detail) for skipped pairs."""
    backend = cached_backend(cfg, voices)
    rate = cfg.sample_rate_hz
    rows, bad = [], []
    audio_seconds = 0.0
    requests = [(normalise_text(triple[f"{k}_text"] or "").text, pick_voice(voices, seed, triple["pair_id"]))
                for triple in triples for k in PARTS]
    spoken = speak_many_16k(backend, requests, rate)  # one batched call on Kokoro
    for t, triple in enumerate(triples):
        voice = requests[t * len(PARTS)][1]
        results = spoken[t * len(PARTS):(t + 1) * len(PARTS)]
        failed = next((r for r in results if isinstance(r, Exception)), None)
        if failed is not None:
            bad.append((triple["pair_id"], getattr(failed, "reason", "synth_failed"), f"{type(failed).__name__}: {failed}"))
            continue
        waves = {k: result[0] for k, result in zip(PARTS, results)}
        audio_seconds += sum(len(w) for w in waves.values()) / rate
        rows.append({"pair_id": triple["pair_id"], "speaker": speaker_name(backend, voice),
                     **{f"{k}_text": triple[f"{k}_text"] for k in PARTS},
                     **{f"{k}_audio": encode_flac(waves[k], rate) for k in PARTS}})
    _write(rows, out_path)
    log.info("%s: %d pairs, %d skipped, %.1f s of audio", Path(out_path).name, len(rows), len(bad), audio_seconds)
    return {"path": str(out_path), "rows": len(rows), "audio_seconds": audio_seconds, "bad": bad}


def _audio_column(names: list[str], part: str) -> str | None:
    return next((c for c in (part, f"{part}_audio") if c in names), None)


def published_columns(names: list[str], source: str) -> dict[str, str]:
    """{part: audio column} + {part_text: text column} of a published SpokenSwag shard, or a ValueError
    naming the columns found (the released schema is unverified: SlamKit's builder names are accepted)."""
    mapping: dict[str, str] = {}
    for part in PARTS:
        audio = _audio_column(names, part)
        if audio is None or f"{part}_text" not in names:
            raise ValueError(
                f"{source}: not a SpokenSwag shard. Expected audio columns prompt/chosen/rejected (or *_audio) and "
                f"prompt_text/chosen_text/rejected_text; found columns: {', '.join(names)}")
        mapping[part] = audio
    return mapping


def convert_published_spokenswag(parquet_path: str | Path, out_path: str | Path, max_auto_bleu: float = 0.3) -> dict:
    """One published SpokenSwag Parquet shard -> PREFERENCE_AUDIO (16 kHz FLAC). Pairs whose repetition score
    (`repetition_score`) is `max_auto_bleu` or more are dropped, as SlamKit's loader does, and rows whose audio
    cannot be decoded are skipped; both are listed in "bad" (reason "repetitive", or the audio's reason)."""
    parquet_path = Path(parquet_path)
    pf = pq.ParquetFile(parquet_path)
    names = pf.schema_arrow.names
    audio_cols = published_columns(names, str(parquet_path))
    id_col = next((c for c in ("pair_id", "id") if c in names), None)
    rows, bad = [], []
    audio_seconds = 0.0
    index = 0
    for batch in pf.iter_batches(batch_size=64):
        for record in batch.to_pylist():
            pair_id = str(record[id_col]) if id_col else f"{parquet_path.stem}-{index:06d}"
            index += 1
            score = repetition_score(record["prompt_text"] or "", record["chosen_text"] or "")
            if score >= max_auto_bleu:  # before decoding: a dropped pair costs no audio work
                bad.append((pair_id, REPETITIVE, f"auto-BLEU-{AUTO_BLEU_N} of prompt_text + ' ' + chosen_text "
                                                 f"{score:.3f} >= {max_auto_bleu} (SlamKit repetition_filter)"))
                continue
            try:
                waves = {}
                for part, col in audio_cols.items():
                    cell = record[col]
                    data = cell.get("bytes") if isinstance(cell, dict) else cell
                    waves[part] = decode_audio_bytes(data or b"", f"{parquet_path}#{pair_id}/{part}")
            except BadAudioError as err:
                bad.append((pair_id, err.reason, err.detail))
                continue
            audio_seconds += sum(len(w) for w in waves.values()) / 16000
            rows.append({"pair_id": pair_id, "speaker": str(record.get("speaker") or "spokenswag"),
                         **{f"{k}_text": record[f"{k}_text"] for k in PARTS},
                         **{f"{k}_audio": encode_flac(waves[k]) for k in PARTS}})
    _write(rows, out_path)
    dropped = sum(1 for b in bad if b[1] == REPETITIVE)
    log.info("%s: %d pairs kept, %d dropped by the repetition filter (auto-BLEU >= %s), %d unreadable",
             parquet_path.name, len(rows), dropped, max_auto_bleu, len(bad) - dropped)
    return {"path": str(out_path), "rows": len(rows), "audio_seconds": audio_seconds, "bad": bad}


def repetition_filter_counts(catalog: Any, shard_dir: str | Path) -> dict[str, int]:
    """{"shards", "kept", "dropped"} of the SpokenSwag shards in `shard_dir` that the catalog recorded: pairs kept,
    and pairs of the published set their conversion dropped by the repetition filter (quarantine rows with
    reason "repetitive" under the shards' fingerprints; the newest record of each shard counts)."""
    shard_dir = Path(shard_dir).resolve()
    newest: dict[str, dict] = {}
    for row in catalog.artifacts(stage="synth"):
        if row["dataset"] == "spokenswag" and Path(row["path"]).resolve().parent == shard_dir:
            if row["path"] not in newest or row["created_at"] > newest[row["path"]]["created_at"]:
                newest[row["path"]] = row
    fingerprints = {row["fingerprint"] for row in newest.values()}
    dropped = sum(1 for q in catalog.quarantined("synth")
                  if q["reason"] == REPETITIVE and q["dataset"] == "spokenswag" and q["fingerprint"] in fingerprints)
    return {"shards": len(newest), "kept": sum(int(r["rows"] or 0) for r in newest.values()), "dropped": dropped}


def repetition_filter_note(catalog: Any, shard_dir: str | Path, max_auto_bleu: float) -> str | None:
    """One line for the run report on the DPO pairs of `shard_dir` (None when the catalog holds none of them)."""
    counts = repetition_filter_counts(catalog, shard_dir)
    if not counts["shards"]:
        return None
    return (f"SpokenSwag DPO pairs ({shard_dir}): {counts['kept']:,} in {counts['shards']} shard(s); "
            f"{counts['dropped']:,} pair(s) of the published set dropped by SlamKit's repetition filter when "
            f"converted (bigram auto-BLEU of prompt + chosen >= {max_auto_bleu}; catalog quarantine, reason "
            f"'{REPETITIVE}'). Shards synthesised from SWAG were filtered before speaking.")
