"""Speech synthesis: TTS backends behind one interface (espeak-ng, Kokoro-82M) and the synth stages."""

from slam_core.synth.backends import get_backend
from slam_core.synth.base import TTSBackend, TTSError, TTSSetupError

__all__ = ["TTSBackend", "TTSError", "TTSSetupError", "get_backend"]
