"""Parquet schemas: the contract between stages (one row per story, recording, segment or pair)."""

from __future__ import annotations

import pyarrow as pa

UNIT_LIST = pa.list_(pa.uint16())

# raw/builtin/stories.parquet — text of the built-in (or TinyStories) corpus
STORIES = pa.schema([
    ("story_id", pa.string()), ("topic", pa.string()), ("split", pa.string()), ("sentences", pa.list_(pa.string())),
])

# raw/builtin/triples.parquet — SWAG-like preference triples (text)
TRIPLES = pa.schema([
    ("pair_id", pa.string()), ("split", pa.string()),
    ("prompt_text", pa.string()), ("chosen_text", pa.string()), ("rejected_text", pa.string()),
])

# synth/<dataset>/<split>/recordings.parquet — long synthetic recordings (audio in FLAC files beside it)
RECORDINGS = pa.schema([
    ("recording_id", pa.string()), ("dataset", pa.string()), ("split", pa.string()), ("path", pa.string()),
    ("speaker", pa.string()), ("duration_s", pa.float64()), ("story_ids", pa.list_(pa.string())), ("text", pa.string()),
])

# segments/<dataset>/<split>/segments-NNNNN.parquet — VAD segments of recordings
SEGMENTS = pa.schema([
    ("segment_id", pa.string()), ("dataset", pa.string()), ("split", pa.string()), ("source_path", pa.string()),
    ("start_s", pa.float64()), ("end_s", pa.float64()), ("speaker", pa.string()), ("text", pa.string()),
])

# units/<dataset>/<split>/units-NNNNN.parquet — deduplicated units per segment
UNITS = pa.schema([
    ("segment_id", pa.string()), ("dataset", pa.string()), ("split", pa.string()),
    ("units", UNIT_LIST), ("durations", UNIT_LIST), ("n_frames", pa.int32()), ("audio_seconds", pa.float32()),
])

# synth/<set>/<split>/pairs.parquet — spoken evaluation pairs (whole utterances, FLAC bytes)
EVAL_PAIRS_AUDIO = pa.schema([
    ("pair_id", pa.string()), ("set", pa.string()), ("speaker", pa.string()),
    ("positive_text", pa.string()), ("negative_text", pa.string()),
    ("positive_audio", pa.binary()), ("negative_audio", pa.binary()),
])

# synth/<set>/<split>/preferences.parquet — spoken preference triples (FLAC bytes)
PREFERENCE_AUDIO = pa.schema([
    ("pair_id", pa.string()), ("speaker", pa.string()),
    ("prompt_text", pa.string()), ("chosen_text", pa.string()), ("rejected_text", pa.string()),
    ("prompt_audio", pa.binary()), ("chosen_audio", pa.binary()), ("rejected_audio", pa.binary()),
])

# synth/stinystories/<split>/data-NNNNN.parquet — the published slprl/sTinyStories layout (HF `Audio` cells:
# 16 kHz FLAC bytes + a file name), so the published set and our synthesis share hub.write_hub_audio_shard
ALIGNED_WORD = pa.struct([("word", pa.string()), ("start_time", pa.float64()), ("end_time", pa.float64())])
STINYSTORIES_AUDIO = pa.schema([
    ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("text", pa.string()),
    ("aligned_text", pa.list_(ALIGNED_WORD)), ("split_sentence", pa.bool_()),
])

# pairs/<set>/pairs.parquet — evaluation pairs as units
EVAL_PAIRS_UNITS = pa.schema([
    ("pair_id", pa.string()), ("set", pa.string()),
    ("positive_units", UNIT_LIST), ("positive_durations", UNIT_LIST),
    ("negative_units", UNIT_LIST), ("negative_durations", UNIT_LIST),
])

# pairs/<set>/preferences.parquet — preference triples as units
PREFERENCE_UNITS = pa.schema([
    ("pair_id", pa.string()),
    ("prompt_units", UNIT_LIST), ("chosen_units", UNIT_LIST), ("rejected_units", UNIT_LIST),
])
