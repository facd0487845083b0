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


def check_centroids_file(path: str | Path, n_units: int, field: str = "units.kmeans_path") -> None:
    """Centroids load as a plain float (K, D) array (never unpickled) and K == n_units."""
    from slam_core.units.quantizer import load_centroids

    centroids = load_centroids(Path(path))
    if centroids.shape[0] != n_units:
        raise InputError(f"{path} holds {centroids.shape[0]} centroids but units.n_units={n_units}", field,
                         f"set units.n_units={centroids.shape[0]} to match the file, or pass centroids fitted "
                         f"with {n_units} units")


def check_config_inputs(cfg: SlamConfig) -> None:
    """Refuse a config whose named inputs are missing, malformed or unsafe to use (see the module docstring)."""
    path = cfg.kmeans_file  # relative paths are under the data root
    if path is not None and path.exists():
        # a missing file is named, with the command that makes it, before any work by slam_core/inputs.py (and
        # not here, so `slam plan` can still show the run it would be)
        check_centroids_file(path, cfg.units.n_units)
    if cfg.eval.judge_endpoint and cfg.eval.judge_api_key_env:
        from slam_core.eval.judge import check_key_transport

        check_key_transport(cfg.eval.judge_endpoint, cfg.eval.judge_allow_insecure)
