"""The TTS interface every backend implements, and its errors (the factory is `slam_core.synth.backends`)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class TTSError(Exception):
    """Text that a backend cannot speak (empty, unpronounceable) or a failed synthesis call."""

    def __init__(self, text: str, reason: str, detail: str = "") -> None:
        self.text = text
        self.reason = reason
        self.detail = detail
        shown = text if len(text) <= 60 else text[:57] + "..."
        super().__init__(f"cannot synthesize {shown!r}: {reason}" + (f" ({detail})" if detail else ""))


class TTSSetupError(RuntimeError):
    """A backend cannot be built (missing library, model or voice); the message says how to fix it."""


@runtime_checkable
class TTSBackend(Protocol):
    """A text-to-speech engine: float32 mono audio at `sample_rate_hz` for a text and a voice."""

    name: str
    sample_rate_hz: int

    def synthesize(self, text: str, voice: str) -> np.ndarray:
        """Speak `text` with `voice`; raises TTSError for unspeakable text."""
        ...

    def synthesize_aligned(self, text: str, voice: str) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        """Speak `text` and time its words: (audio, [(word, start_s, end_s)]), times in seconds."""
        ...

    def voices(self) -> list[str]:
        """Voices this backend can use."""
        ...

    def check_voice(self, voice: str) -> None:
        """Raise TTSSetupError if `voice` cannot be used."""
        ...


def check_text(text: str) -> str:
    """Strip `text` and reject text without anything to pronounce."""
    stripped = " ".join(text.split())
    if not any(ch.isalnum() for ch in stripped):
        raise TTSError(text, "empty_text", "no letters or digits")
    return stripped
