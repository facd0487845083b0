"""Find checkpoints on disk (for scheduled evaluation of whatever training has produced)."""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def is_checkpoint(path: Path) -> bool:
    """A complete HF save_pretrained dir: config plus weights (atomic saves make partial dirs impossible)."""
    return (path / "config.json").is_file() and any((path / w).is_file() for w in WEIGHT_FILES)


def find_checkpoints(checkpoints_root: str | Path) -> list[Path]:
    """Every checkpoint directory below `checkpoints_root`, oldest first, ignoring hidden temp dirs."""
    root = Path(checkpoints_root)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.rglob("config.json")
             if is_checkpoint(p.parent) and not any(part.startswith(".") for part in p.parent.relative_to(root).parts)]
    return sorted(set(found), key=lambda p: (_weights(p).stat().st_mtime, str(p)))


def checkpoint_digest(path: str | Path) -> str:
    """Cheap identity of a checkpoint's weights (path, size, mtime): changes when the weights are rewritten."""
    weights = _weights(Path(path))
    st = weights.stat()
    return hashlib.sha256(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _weights(path: Path) -> Path:
    for w in WEIGHT_FILES:
        if (path / w).is_file():
            return path / w
    raise FileNotFoundError(f"{path}: no model weights ({' or '.join(WEIGHT_FILES)})")


def newest_metrics_csv(checkpoints_root: str | Path) -> Path | None:
    """The most recently written training metrics file below `checkpoints_root`, if any."""
    found = sorted(Path(checkpoints_root).rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
