"""Where the project's shared data lies: `../shared` beside the checkout (CI), else /work/shared."""

from __future__ import annotations

import os
from pathlib import Path


def _shared_dir() -> Path:
    candidates = [os.environ.get("SLAM_SHARED_DIR"), Path(__file__).resolve().parents[2] / "shared", "/work/shared"]
    for cand in candidates:
        if cand and (Path(cand) / "data" / "real-speech").is_dir():
            return Path(cand)
    return Path(__file__).resolve().parents[2] / "shared"


SHARED = _shared_dir()
REAL_SPEECH = SHARED / "data" / "real-speech"
