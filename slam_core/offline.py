"""One rule for "may this process download a model?", used by every loader (hub models, Whisper checkpoints).

Offline when any of HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE or SLAM_OFFLINE holds a true value, read the way
huggingface_hub reads its own flags (1, true, yes or on, any case). Loaders then use local files and caches
only and say which variable stopped the download.
"""

from __future__ import annotations

import os

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SLAM_OFFLINE")


def offline_variable() -> str | None:
    """The first offline variable set to a true value, or None when downloads are allowed."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def offline() -> bool:
    return offline_variable() is not None
