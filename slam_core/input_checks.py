"""Checks of what a run will read, done in a second before any work starts (after the config validated itself).

K-means centroids named by the config must load as plain floats with one row per unit of the vocabulary (more
rows would write unit ids the LM has no token for); a judge API key must not travel unencrypted to another
machine. (Inputs a run needs but does not make, such as evaluation sets and models, are `slam_core/inputs.py`'s.) Each failure is one
`InputError` naming the field, so `slam` refuses with one line instead of failing minutes into a flow.
"""

from __future__ import annotations

from pathlib import Path

from slam_core.config import SlamConfig
from slam_core.errors import InputError


def encoder_feature_dim(encoder: str) -> int | None:
    """The width of the features `units.encoder` gives (HuBERT: every layer has the model's hidden size), read from
    its config without loading weights: the tiny stand-in's, a local directory's or a cached hub id's config.json.
    None when it cannot be known here (a hub id not in the cache: the encoder's own loader reports that)."""
    import json

    from slam_core.units.encoder import TINY_ENCODER_NAME, tiny_encoder_config

    if encoder == TINY_ENCODER_NAME:
        return int(tiny_encoder_config().hidden_size)
    config = Path(encoder).expanduser() / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(encoder, "config.json")
        except Exception:  # not a repo id at all
            cached = None
        if not isinstance(cached, str):
            return None
        config = Path(cached)
    try:
        size = json.loads(config.read_text()).get("hidden_size")
    except (OSError, ValueError):
        return None
    return int(size) if isinstance(size, int) else None


def check_centroids_file(path: str | Path, n_units: int, field: str = "units.kmeans_path",
                         encoder: str | None = None) -> None:
    """Centroids load as a plain float (K, D) array (never unpickled), K == n_units and, when the encoder's feature
    width is known, D equals it (else every frame would be compared with vectors of another space)."""
    from slam_core.units.quantizer import load_centroids

    centroids = load_centroids(Path(path))
    if centroids.shape[0] != n_units:
        raise InputError(f"{path} holds {centroids.shape[0]} centroids but units.n_units={n_units}", field,
                         f"set units.n_units={centroids.shape[0]} to match the file, or pass centroids fitted "
                         f"with {n_units} units")
    dim = encoder_feature_dim(encoder) if encoder else None
    if dim is not None and centroids.shape[1] != dim:
        raise InputError(f"{path} holds centroids of dimension {centroids.shape[1]} but encoder '{encoder}' gives "
                         f"{dim}-dimensional features", field,
                         "pass centroids fitted on this encoder's features (or set units.encoder to the encoder "
                         "they were fitted on); without units.kmeans_path, units.fit_kmeans=true fits new ones")


def check_config_inputs(cfg: SlamConfig) -> None:
    """Refuse a config whose named inputs are missing, malformed or unsafe to use (see the module docstring)."""
    path = cfg.kmeans_file  # relative paths are under the data root
    if path is not None and path.exists():
        # a missing file is named, with the command that makes it, before any work by slam_core/inputs.py (and
        # not here, so `slam plan` can still show the run it would be)
        check_centroids_file(path, cfg.units.n_units, encoder=cfg.units.encoder)
    if cfg.eval.judge_endpoint and cfg.eval.judge_api_key_env:
        from slam_core.eval.judge import check_key_transport

        check_key_transport(cfg.eval.judge_endpoint, cfg.eval.judge_allow_insecure)
