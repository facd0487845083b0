"""K-means quantiser: fit (faiss), save/load plain centroids, assign frames to units (faiss or torch).

The published textlesslib k-means is a joblib pickle of a scikit-learn KMeans; `convert_kmeans_pickle`
turns it, once and only under explicit opt-in, into a plain (K, D) float32 array.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
from pathlib import Path

import numpy as np
import torch

from slam_core import published_kmeans
from slam_core.atomic import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

PUBLISHED_KMEANS_URL, PUBLISHED_KMEANS_NAME = published_kmeans.URL, published_kmeans.FILE_NAME
PUBLISHED_SHA256 = published_kmeans.SHA256
SOURCE_SUFFIX = ".source.json"  # beside converted centroids: which pickle they came from, and their own digest
_SAFETENSORS_KEY = "centroids"
_TORCH_CHUNK_FRAMES = 65_536


class KmeansError(ValueError):
    """Centroids or a k-means file that cannot be used; the message names the file and the reason."""


def fit_kmeans(features: np.ndarray, n_units: int, iters: int, seed: int) -> np.ndarray:
    """Fit k-means with faiss (seeded, all given frames used) and return float32 (K, D) centroids."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < n_units:
        raise KmeansError(f"k-means needs a (N, D) array with N >= n_units={n_units}; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise KmeansError("k-means features contain NaN or Inf")
    # The caller already sampled the frames, so stop faiss from subsampling them again.
    max_points = math.ceil(x.shape[0] / n_units) + 1
    import faiss  # here, not at import: GPU hosts assign units with torch and may lack faiss

    km = faiss.Kmeans(x.shape[1], n_units, niter=iters, seed=seed, max_points_per_centroid=max_points, verbose=False)
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def save_centroids(centroids: np.ndarray, path: Path) -> Path:
    """Write centroids atomically as .npy or .safetensors (by suffix)."""
    path = Path(path)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    with atomic_path(path, suffix=path.suffix) as tmp:
        if path.suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, c, allow_pickle=False)
        elif path.suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file({_SAFETENSORS_KEY: c}, str(tmp))
        else:
            raise KmeansError(f"{path}: centroid files must end in .npy or .safetensors")
    return path


def load_centroids(path: Path) -> np.ndarray:
    """Read (K, D) float32 centroids from .npy or .safetensors; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise KmeansError(f"{path}: centroid file not found (set units.kmeans_path, or leave it empty to fit k-means)")
    if path.suffix == ".npy":
        try:
            c = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:  # pickled objects, truncated or random bytes
            raise KmeansError(f"{path}: not a plain .npy array of centroids ({str(err).split('.')[0]}); write "
                              f"plain float centroids, or convert a trusted k-means pickle with `slam units "
                              f"convert-kmeans`") from None
    elif path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise KmeansError(f"{path}: not a readable safetensors file ({err}); write the centroids again") from None
        if _SAFETENSORS_KEY not in tensors:
            raise KmeansError(f"{path}: no '{_SAFETENSORS_KEY}' tensor (found {sorted(tensors)})")
        c = tensors[_SAFETENSORS_KEY]
    else:
        raise KmeansError(
            f"{path}: expected .npy or .safetensors centroids; convert a k-means pickle first with convert_kmeans_pickle"
        )
    return _checked_centroids(c, path)


def _checked_centroids(c: object, source: Path) -> np.ndarray:
    c = np.asarray(c)
    if c.ndim != 2 or c.shape[0] < 2 or not np.issubdtype(c.dtype, np.floating):
        raise KmeansError(f"{source}: centroids must be a float (K, D) array with K >= 2; got {c.dtype} {c.shape}")
    if not np.isfinite(c).all():
        raise KmeansError(f"{source}: centroids contain NaN or Inf")
    return np.ascontiguousarray(c, dtype=np.float32)


def assign_units(features: np.ndarray | torch.Tensor, centroids: np.ndarray, backend: str = "auto") -> np.ndarray:
    """Nearest-centroid (L2) unit id per frame as int64.

    backend: "faiss" (IndexFlatL2, CPU), "torch" (‖c‖²−2x·cᵀ argmin on the features' device), or
    "auto" (torch for CUDA tensors, else faiss).
    """
    if backend == "auto":
        backend = "torch" if isinstance(features, torch.Tensor) and features.is_cuda else "faiss"
    if backend == "faiss":
        import faiss

        x = features.detach().float().cpu().numpy() if isinstance(features, torch.Tensor) else features
        x = np.ascontiguousarray(x, dtype=np.float32)
        index = faiss.IndexFlatL2(centroids.shape[1])
        index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        _, ids = index.search(x, 1)
        return ids[:, 0].astype(np.int64)
    if backend == "torch":
        return _assign_torch(features, centroids)
    raise ValueError(f"unknown assignment backend '{backend}' (faiss, torch or auto)")


@torch.no_grad()
def _assign_torch(features: np.ndarray | torch.Tensor, centroids: np.ndarray) -> np.ndarray:
    x = torch.as_tensor(features)
    c = torch.as_tensor(centroids, device=x.device, dtype=torch.float32)
    out = [nearest_centroid(chunk, c) for chunk in x.split(_TORCH_CHUNK_FRAMES)]
    return torch.cat(out).cpu().numpy().astype(np.int64)


def file_sha256(path: Path) -> str:
    """Full hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_record_path(centroids_path: Path) -> Path:
    return Path(str(centroids_path) + SOURCE_SUFFIX)


def verify_centroids_source(centroids_path: Path, expected_source_sha256: str) -> None:
    """Raise KmeansError unless `centroids_path` was converted from a pickle whose full sha256 is
    `expected_source_sha256` (per its source record) and has not changed since (its own full sha256 matches)."""
    centroids_path = Path(centroids_path)
    fix = published_kmeans.convert_command(str(centroids_path))
    if not centroids_path.is_file():
        raise KmeansError(f"{centroids_path}: centroid file not found — {fix}")
    record_path = source_record_path(centroids_path)
    try:
        record = json.loads(record_path.read_text())
        source_sha256, own_sha256 = str(record["source_sha256"]), str(record["centroids_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        raise KmeansError(f"{centroids_path}: no readable source record {record_path.name} (written by "
                          f"`slam units convert-kmeans`), so its origin cannot be checked — {fix}") from None
    if source_sha256 != expected_source_sha256.lower():
        raise KmeansError(f"{centroids_path}: converted from a pickle with sha256 {source_sha256}, expected "
                          f"{expected_source_sha256} (units.kmeans_source_sha256) — {fix}")
    actual = file_sha256(centroids_path)
    if actual != own_sha256:
        raise KmeansError(f"{centroids_path}: sha256 {actual} differs from {own_sha256} recorded at conversion "
                          f"(the file changed since) — {fix}")


@torch.no_grad()
def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """argmin_k ‖x − c_k‖² per row as int64, on x's device: ‖c‖² − 2x·cᵀ in float32 even for a half-precision
    encoder, so near-ties resolve as on the CPU path. A row with NaN/Inf gets -1, as faiss gives it."""
    c = centroids.float()
    ids = ((c * c).sum(dim=1) - 2.0 * x.float() @ c.T).argmin(dim=1)
    return torch.where(torch.isfinite(x).all(dim=1), ids, -1)


def _unpickle(pickle_path: Path) -> object:
    try:
        import joblib  # the published file is a joblib pickle (numpy arrays in joblib's own wrapper)
    except ImportError:
        joblib = None
    try:
        if joblib is not None:
            return joblib.load(pickle_path)
        with open(pickle_path, "rb") as fh:
            return pickle.load(fh)
    except ModuleNotFoundError as err:
        raise KmeansError(
            f"{pickle_path}: unpickling needs the module '{err.name}' (pip install scikit-learn joblib), "
            f"or convert the file on a machine that has them"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise KmeansError(f"{pickle_path}: not a readable k-means pickle ({err})") from None


def convert_kmeans_pickle(pickle_path: Path, out_path: Path, allow_unpickle: bool = False,
                          expected_sha256: str | None = PUBLISHED_SHA256) -> Path:
    """Extract `cluster_centers_` from a (joblib) sklearn KMeans pickle into plain centroids at `out_path`, and
    write `<out_path>.source.json` (the pickle's full sha256, whether it is the published file, the centroids'
    own sha256) so later runs can check where the centroids came from.

    Unpickling executes code from the file, so it is refused unless `allow_unpickle=True`. The pickle's full
    sha256 must equal `expected_sha256` (default: the published mHuBERT-25Hz km500 file; None: any file, e.g.
    another k-means, recorded as not published), checked before unpickling.
    """
    pickle_path = Path(pickle_path)
    if not allow_unpickle:
        raise KmeansError(
            f"{pickle_path}: refusing to unpickle (it can run arbitrary code); if you trust the file, "
            f"pass --allow-unpickle (allow_unpickle=True) to convert it once into plain centroids"
        )
    if not pickle_path.is_file():
        raise KmeansError(f"{pickle_path}: k-means file not found (download it from {PUBLISHED_KMEANS_URL})")
    digest = file_sha256(pickle_path)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        which = "the published " + PUBLISHED_KMEANS_URL if expected_sha256.lower() == PUBLISHED_SHA256 else "the expected"
        raise KmeansError(
            f"{pickle_path}: sha256 {digest} does not match {which} sha256 {expected_sha256}; re-download it, or "
            f"convert a different k-means file with --sha256 none (its units will not match the published models)")
    model = _unpickle(pickle_path)
    if not hasattr(model, "cluster_centers_"):
        raise KmeansError(f"{pickle_path}: unpickled {type(model).__name__} has no cluster_centers_ (not a KMeans)")
    centroids = _checked_centroids(model.cluster_centers_, pickle_path)
    out = save_centroids(centroids, Path(out_path))
    record = {"source_file": pickle_path.name, "source_sha256": digest, "published": digest == PUBLISHED_SHA256,
              "centroids_sha256": file_sha256(out), "shape": list(centroids.shape)}
    write_text_atomic(source_record_path(out), json.dumps(record, indent=2, sort_keys=True) + "\n")
    log.info("converted %s -> %s (%d x %d centroids)", pickle_path, out, *centroids.shape)
    return out
