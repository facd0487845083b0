"""The word-alignment stage: one SEGMENTS shard -> its WORD_ALIGNMENTS shard, fingerprinted, cached and catalogued.

The output sits beside the segments' units shard (`units/<dataset>/<split>/words-NNNNN.parquet` next to
`units-NNNNN.parquet`, `words.words_path_for`). The fingerprint covers the method and its settings, the segments'
fingerprint and the alignment code, so a rerun with the same inputs reuses the shard (catalog check), and the
catalog records rows = segments, tokens = aligned words, plus the transcript words in `data_catalog.alignments`
for the share aligned.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_catalog import Catalog, produce_or_reuse
from data_catalog.alignments import STAGE, has_alignment_counts, record_alignment_counts
from slam_core.align.sources import METHODS, align_segment_shard
from slam_core.align.words import read_alignment_counts, share
from slam_core.fingerprint import code_version, fingerprint

ALIGN_CODE_SCOPE = ("align", "audio/io.py")
_models: dict[tuple[str, str], Any] = {}
_models_lock = threading.Lock()
# One shard at a time per Whisper: word timestamps hook the shared model's cross-attention for the length of a
# forward pass (whisper.timing.find_alignment), so two threads on one model would read each other's weights.
_model_use: dict[tuple[str, str], threading.Lock] = {}


@dataclass(frozen=True)
class AlignSettings:
    """How a set is aligned: 'synth' (timings stored by synthesis) or 'asr' (Whisper word timestamps)."""

    method: str = "synth"
    asr_model: str = "large-v3-turbo"  # official openai-whisper name or a local checkpoint file
    language: str | None = "en"
    asr_max_tokens: int | None = None  # cap on decoded tokens per 30 s window (None: Whisper's default)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"alignment method {self.method!r}: expected one of {', '.join(METHODS)}")

    def fingerprint_config(self) -> dict[str, Any]:
        return {"method": self.method} if self.method == "synth" else asdict(self)


def alignment_fingerprint(settings: AlignSettings, segments_fingerprint: str) -> str:
    return fingerprint(STAGE, settings.fingerprint_config(), [segments_fingerprint],
                       code=code_version(ALIGN_CODE_SCOPE))


def _asr_model(name: str, device: str) -> Any:
    """One Whisper per (model, device) per process: shards of one run share it."""
    from slam_core.eval.asr import load_asr

    with _models_lock:
        if (name, device) not in _models:
            _models[(name, device)] = load_asr(name, device)
            _model_use[(name, device)] = threading.Lock()
        return _models[(name, device)]


def align_shard(settings: AlignSettings, segments_path: str | Path, out_path: str | Path, *, dataset: str,
                split: str, segments_fingerprint: str, catalog_path: str | Path, device: str = "cpu",
                audio_root: Path | None = None) -> dict[str, Any]:
    """Align one segment shard unless the catalog already holds it; record it and its word counts.

    Returns the catalog record plus words, tokens (aligned words) and share_aligned."""
    catalog = Catalog(catalog_path)
    fp = alignment_fingerprint(settings, segments_fingerprint)

    def produce() -> dict[str, Any]:
        if settings.method != "asr":
            return align_segment_shard(settings.method, segments_path, out_path, audio_root=audio_root)
        model = _asr_model(settings.asr_model, device)
        with _model_use[(settings.asr_model, device)]:
            return align_segment_shard(settings.method, segments_path, out_path, asr_model=model,
                                       language=settings.language, audio_root=audio_root,
                                       max_tokens=settings.asr_max_tokens)

    record = produce_or_reuse(catalog, stage=STAGE, dataset=dataset, split=split, out_path=out_path,
                              fingerprint=fp, produce=produce, upstream=[segments_fingerprint])
    counts = read_alignment_counts(out_path)
    if not has_alignment_counts(catalog, str(out_path), fp):  # also after a crash between the two records
        record_alignment_counts(catalog, path=str(out_path), fingerprint=fp, dataset=dataset, split=split,
                                source=settings.method, segments=counts["rows"], words=counts["words"],
                                aligned=counts["tokens"])
    return {**record, "words": counts["words"], "tokens": counts["tokens"],
            "share_aligned": share(counts["tokens"], counts["words"])}
