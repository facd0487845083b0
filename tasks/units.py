"""Unit tasks: encoder, k-means fit, unit extraction per segment shard and per pair set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from data_catalog import produce_or_reuse
from slam_core.config import UnitsConfig
from slam_core.paths import under_root
from slam_core.units import extract, quantizer, shards
from tasks.common import CACHED, catalog_at


@task(name="fit-kmeans", retries=1, tags=["gpu"], **CACHED)
def fit_kmeans(segment_paths: list[str], cfg: UnitsConfig, seed: int, device: str, out_path: str,
               fingerprint: str, data_root: str) -> dict[str, Any]:
    """Fit (or convert) the k-means centroids that turn encoder frames into units."""
    def produce() -> dict[str, Any]:
        if cfg.kmeans_path:
            source = under_root(Path(data_root), cfg.kmeans_path)
            if cfg.kmeans_source_sha256:  # checked before any work too; again here, right before use
                quantizer.verify_centroids_source(source, cfg.kmeans_source_sha256)
            quantizer.save_centroids(quantizer.load_centroids(source), Path(out_path))
        else:
            extractor = extract.build_extractor(cfg, Path(data_root), centroids=None, device=device)
            extract.fit_kmeans_from_segments([Path(p) for p in segment_paths], extractor, cfg, seed, Path(out_path))
        return {"rows": cfg.n_units}

    return produce_or_reuse(catalog_at(data_root), stage="units", dataset="kmeans", split="all", out_path=out_path,
                            fingerprint=fingerprint, produce=produce)


@task(name="extract-units", retries=1, tags=["gpu"], **CACHED)
def extract_units(segments_path: str, centroids_path: str, cfg: UnitsConfig, device: str, out_path: str,
                  dataset: str, split: str, fingerprint: str, data_root: str) -> dict[str, Any]:
    """Tokenise one shard of segments into deduplicated units."""
    def produce() -> dict[str, Any]:
        extractor = extract.build_extractor(cfg, Path(data_root), centroids=Path(centroids_path), device=device)
        return shards.extract_segment_shard(Path(segments_path), Path(out_path), extractor, cfg.batch_size)

    return produce_or_reuse(catalog_at(data_root), stage="units", dataset=dataset, split=split, out_path=out_path,
                            fingerprint=fingerprint, produce=produce)


@task(name="extract-pair-units", retries=1, tags=["gpu"], **CACHED)
def extract_pair_units(audio_path: str, centroids_path: str, cfg: UnitsConfig, device: str, out_path: str,
                       dataset: str, split: str, fingerprint: str, data_root: str) -> dict[str, Any]:
    """Tokenise spoken pairs or preference triples."""
    def produce() -> dict[str, Any]:
        extractor = extract.build_extractor(cfg, Path(data_root), centroids=Path(centroids_path), device=device)
        return shards.extract_pair_units(Path(audio_path), Path(out_path), extractor, cfg.batch_size)

    return produce_or_reuse(catalog_at(data_root), stage="pairs", dataset=dataset, split=split,
                            out_path=out_path, fingerprint=fingerprint, produce=produce)
