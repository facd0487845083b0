"""Speech units: HuBERT layer features -> k-means units -> run-length dedup -> Parquet (extract.py, shards.py)."""

from slam_core.units.encoder import (
    REAL_ENCODER_ID, TINY_ENCODER_LAYER, EncoderNotAvailableError, build_tiny_encoder, load_encoder, resolve_encoder,
)
from slam_core.units.extract import UnitExtractor, build_extractor, dedup_units, fit_kmeans_from_segments
from slam_core.units.shards import extract_audio_dir, extract_pair_units, extract_segment_shard
from slam_core.units.quantizer import (
    KmeansError, assign_units, convert_kmeans_pickle, fit_kmeans, load_centroids, save_centroids,
)

__all__ = [
    "REAL_ENCODER_ID", "TINY_ENCODER_LAYER", "EncoderNotAvailableError", "KmeansError", "UnitExtractor",
    "assign_units", "build_extractor", "build_tiny_encoder", "convert_kmeans_pickle", "dedup_units", "extract_audio_dir",
    "extract_pair_units", "extract_segment_shard", "fit_kmeans", "fit_kmeans_from_segments", "load_centroids",
    "load_encoder", "resolve_encoder", "save_centroids",
]
