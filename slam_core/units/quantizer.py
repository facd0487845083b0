"""K-means quantiser: fit (faiss), save/load plain centroids, assign frames to units (faiss or torch).

The published textlesslib k-means is a joblib pickle of a scikit-learn KMeans; `convert_kmeans_pickle`
turns it, once and only under explicit opt-in, into a plain (K, D) float32 array.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
from pathlib import Path

import faiss
import numpy as np
import torch

from slam_core.atomic import atomic_path

log = logging.getLogger(__name__)

PUBLISHED_KMEANS_URL = (
    "https://dl.fbaipublicfiles.com/textless_nlp/twist/speech_tokenizer/mhubert_base_25hz_cp_mls_cv_sp_fisher_L11_km500.bin"
)
PUBLISHED_KMEANS_NAME = PUBLISHED_KMEANS_URL.rsplit("/", 1)[1]
# Only the ends of the published digest are known (docs/published-artifacts.md, 'km500 quantiser'): 03cc04a9…28ad.
PUBLISHED_SHA256_PREFIX, PUBLISHED_SHA256_SUFFIX = "03cc04a9", "28ad"
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
    # float32 distances even for a half-precision encoder, so near-ties resolve as on the CPU path.
    x = x.float()
    c = torch.as_tensor(centroids, device=x.device, dtype=torch.float32)
    c_sq = (c * c).sum(dim=1)
    out = [(c_sq - 2.0 * chunk @ c.T).argmin(dim=1) for chunk in x.split(_TORCH_CHUNK_FRAMES)]
    return torch.cat(out).cpu().numpy().astype(np.int64)


def _verify_published_digest(pickle_path: Path) -> None:
    digest = hashlib.sha256(pickle_path.read_bytes()).hexdigest()
    if not (digest.startswith(PUBLISHED_SHA256_PREFIX) and digest.endswith(PUBLISHED_SHA256_SUFFIX)):
        raise KmeansError(
            f"{pickle_path}: sha256 {digest[:8]}…{digest[-4:]} does not match the published "
            f"{PUBLISHED_SHA256_PREFIX}…{PUBLISHED_SHA256_SUFFIX} ({PUBLISHED_KMEANS_URL}); re-download it"
        )


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


def convert_kmeans_pickle(pickle_path: Path, out_path: Path, allow_unpickle: bool = False) -> Path:
    """Extract `cluster_centers_` from a (joblib) sklearn KMeans pickle into plain centroids at `out_path`.

    Unpickling executes code from the file, so it is refused unless `allow_unpickle=True`. The published
    textlesslib file (recognised by name) must also match its known sha256.
    """
    pickle_path = Path(pickle_path)
    if not allow_unpickle:
        raise KmeansError(
            f"{pickle_path}: refusing to unpickle (it can run arbitrary code); if you trust the file, "
            f"pass --allow-unpickle (allow_unpickle=True) to convert it once into plain centroids"
        )
    if not pickle_path.is_file():
        raise KmeansError(f"{pickle_path}: k-means file not found (download it from {PUBLISHED_KMEANS_URL})")
    if pickle_path.name == PUBLISHED_KMEANS_NAME:
        _verify_published_digest(pickle_path)
    model = _unpickle(pickle_path)
    if not hasattr(model, "cluster_centers_"):
        raise KmeansError(f"{pickle_path}: unpickled {type(model).__name__} has no cluster_centers_ (not a KMeans)")
    centroids = _checked_centroids(model.cluster_centers_, pickle_path)
    log.info("converted %s -> %s (%d x %d centroids)", pickle_path, out_path, *centroids.shape)
    return save_centroids(centroids, Path(out_path))
