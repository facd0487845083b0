"""Where each stage writes under the data root (docs/architecture.md, 'Data flow between stages')."""

from __future__ import annotations

from pathlib import Path

STAGES = ("raw", "synth", "segments", "units", "tokens", "pairs", "models", "checkpoints", "eval", "reports",
          "quarantine")


def stage_dir(root: Path, stage: str, *parts: str) -> Path:
    if stage not in STAGES:
        raise ValueError(f"unknown stage directory '{stage}' (known: {', '.join(STAGES)})")
    path = Path(root, stage, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def catalog_path(root: Path) -> Path:
    return Path(root) / "catalog.duckdb"


def under_root(root: Path, value: str | Path) -> Path:
    """A configured path: absolute (after ~ expansion) as given, relative ones under the data root."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(root) / path
