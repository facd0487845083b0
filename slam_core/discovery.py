"""Find checkpoints on disk (for scheduled evaluation of whatever training has produced), and name them by
content."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

from slam_core.atomic import write_text_atomic
from slam_core.fingerprint import file_sha256
from slam_core.paths import stage_dir

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
CONFIG_FILE = "config.json"
DIGEST_CACHE_FILE = "checkpoint-digests.json"
LATEST_POINTER = "latest"  # slam_core/lm/checkpoint.py LATEST_FILE: names a training run's current step dir

# sha256 of a file by (resolved path, size, mtime_ns, ctime_ns, inode): every eval task of a flow run asks for
# the digest of the same checkpoints, and a 0.5B checkpoint takes seconds to hash.
_FILE_DIGESTS: dict[str, str] = {}
_LOCK = threading.Lock()


def is_checkpoint(path: Path) -> bool:
    """A complete HF save_pretrained dir: config plus weights (atomic saves make partial dirs impossible)."""
    return (path / CONFIG_FILE).is_file() and any((path / w).is_file() for w in WEIGHT_FILES)


def find_checkpoints(checkpoints_root: str | Path) -> list[Path]:
    """Every checkpoint directory below `checkpoints_root`, oldest first, ignoring hidden temp dirs and the
    intermediate steps of a training run: where a `latest` pointer file sits beside `step-N` directories
    (`slam_core/lm/checkpoint.py`), only the step it names is the run's model (the others are kept to resume
    from and are never evaluated by the run itself, so evaluating them on a schedule would be wasted work)."""
    root = Path(checkpoints_root)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.rglob(CONFIG_FILE)
             if is_checkpoint(p.parent) and not any(part.startswith(".") for part in p.parent.relative_to(root).parts)]
    found = [p for p in found if not _superseded_step(p)]
    return sorted(set(found), key=lambda p: (_weights(p).stat().st_mtime, str(p)))


def _superseded_step(path: Path) -> bool:
    """A training run's step directory that its `latest` pointer does not name."""
    pointer = path.parent / LATEST_POINTER
    if not pointer.is_file():
        return False
    return pointer.read_text().strip() != path.name


def identity_files(path: str | Path) -> list[Path]:
    """The files that define a checkpoint's model: config.json and the weights (a single safetensors file, or a
    sharded index plus every shard it maps)."""
    path = Path(path)
    weights = _weights(path)
    files = [path / CONFIG_FILE, weights]
    if weights.name.endswith(".index.json"):
        shards = sorted(set(json.loads(weights.read_text()).get("weight_map", {}).values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: {weights.name} maps weights to missing shard(s) {missing}")
        files += [path / s for s in shards]
    return files


def checkpoint_digest(path: str | Path, cache_path: str | Path | None = None) -> str:
    """Content identity of a checkpoint: sha256 over the names and bytes of its config and weight files.

    A copy under another directory or data root has the same digest; rewritten weights get a new one. File
    hashes are remembered by (path, size, mtime, ctime, inode) in this process and, with `cache_path`, in a JSON
    file that later processes (scheduled evaluation polls) read instead of hashing the weights again.
    """
    path = Path(path)
    combined = hashlib.sha256()
    for f in identity_files(path):
        combined.update(f"{f.relative_to(path).as_posix()}\t{_file_digest(f, cache_path)}\n".encode())
    return combined.hexdigest()[:16]


def data_root_checkpoint_digest(data_root: str | Path, path: str | Path) -> str:
    """`checkpoint_digest` with the file-hash cache of a data root (<data root>/eval/checkpoint-digests.json), which
    every process of a run shares: the evaluate flow, its task workers and later scheduled polls."""
    return checkpoint_digest(path, cache_path=stage_dir(Path(data_root), "eval") / DIGEST_CACHE_FILE)


def _file_digest(path: Path, cache_path: str | Path | None) -> str:
    key = _stat_key(path)
    with _LOCK:
        if key in _FILE_DIGESTS:
            return _FILE_DIGESTS[key]
    on_disk = _read_cache(cache_path) if cache_path else {}
    digest = on_disk.get(key) or file_sha256(path)
    with _LOCK:
        _FILE_DIGESTS[key] = digest
    if cache_path and key not in on_disk:
        _write_cache(Path(cache_path), on_disk | {key: digest})
    return digest


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def _read_cache(cache_path: str | Path) -> dict[str, str]:
    try:
        data = json.loads(Path(cache_path).read_text())
    except (OSError, ValueError):  # absent or unreadable: it is only a cache, hash again
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_cache(cache_path: Path, entries: dict[str, str]) -> None:
    """Keep only entries whose file still has that size and mtime (deleted or rewritten checkpoints drop out)."""
    def current(key: str) -> bool:
        file = Path(key.rsplit("|", 4)[0])
        try:
            return _stat_key(file) == key
        except OSError:
            return False

    try:
        write_text_atomic(cache_path, json.dumps({k: v for k, v in entries.items() if current(k)}, indent=0,
                                                 sort_keys=True) + "\n")
    except OSError as err:  # a read-only data root still evaluates; it just hashes again next time
        log.warning("checkpoint digest cache %s not written: %s", cache_path, err)


def _weights(path: Path) -> Path:
    for w in WEIGHT_FILES:
        if (path / w).is_file():
            return path / w
    raise FileNotFoundError(f"{path}: no model weights ({' or '.join(WEIGHT_FILES)})")


def newest_metrics_csv(checkpoints_root: str | Path, stage: str | None = None) -> Path | None:
    """The most recently written training metrics file below `checkpoints_root`, if any; with `stage`
    ("pretrain" or "dpo") only those of that stage's run directories (`<stage>-<fingerprint>/metrics.csv`), so a
    DPO run written after pre-training is never taken for the pre-training curve."""
    found = [p for p in Path(checkpoints_root).rglob("metrics.csv")
             if stage is None or p.parent.name.startswith(f"{stage}-")]
    found.sort(key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def split_usable_checkpoints(paths: list[str], vocab_size: int) -> tuple[list[str], list[tuple[str, str]]]:
    """(checkpoints that can be evaluated, [(checkpoint, reason)] for those that cannot): a missing folder,
    not a causal LM, truncated weights or another vocabulary is reported, and the others still go on."""
    from slam_core.errors import InputError
    from slam_core.lm.model_check import check_causal_lm_dir

    usable, rejected = [], []
    for path in paths:
        try:
            check_causal_lm_dir(path, "checkpoint", vocab_size)
            usable.append(path)
        except InputError as err:
            log.debug("not evaluating %s: %s", path, err)
            rejected.append((path, str(err)))
    return usable, rejected
