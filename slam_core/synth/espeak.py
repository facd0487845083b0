"""espeak-ng through the shared library of the `espeakng-loader` wheel (ctypes, synchronous mode).

espeak-ng keeps one global synthesiser per process, so every call holds a module lock while it sets
the voice and rate and collects the samples its callback delivers. Output: 16-bit mono at 22050 Hz.
The engine has no randomness: the same text, voice and rate give the same samples.
"""

from __future__ import annotations

import ctypes
import logging
import threading

import numpy as np

from slam_core.synth.base import TTSError, TTSSetupError, check_text

log = logging.getLogger(__name__)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_EE_OK = 0
DEFAULT_VOICES = ("en-us", "en-gb", "en-us+f3", "en-us+m3", "en-gb+f4", "en-us+m7")
# espeak-ng names British English plain "en"; accept the usual language tag too.
_VOICE_ALIASES = {"en-gb": "en"}

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_lock = threading.Lock()
_engine: "_Engine | None" = None


class _Engine:
    """The process-wide espeak-ng library handle (initialised once, used only under `_lock`)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise TTSSetupError(
                "espeak backend needs the 'espeakng-loader' package (pip install espeakng-loader), "
                "which ships libespeak-ng and its voice data"
            ) from None
        lib_path = espeakng_loader.get_library_path()
        try:
            self.lib = ctypes.CDLL(lib_path)
            data_path = espeakng_loader.get_data_path()
        except (OSError, RuntimeError) as err:
            raise TTSSetupError(f"cannot load espeak-ng from {lib_path}: {err}") from None
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise TTSSetupError(f"espeak-ng failed to initialise with data at {data_path} (code {rate})")
        self.sample_rate_hz = rate
        self._chunks: list[np.ndarray] = []
        # Keep a reference: ctypes frees the trampoline when the Python object dies.
        self._callback = _SYNTH_CALLBACK(self._collect)
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n_samples: int, _events) -> int:
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0  # 0 = continue synthesis

    def speak(self, text: str, voice: str, words_per_minute: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(_espeak_voice_name(voice).encode()) != _EE_OK:
            raise TTSSetupError(f"espeak-ng has no voice {voice!r} (try en-us, en-gb, en-us+f3, en-us+m3)")
        self.lib.espeak_SetParameter(_PARAM_RATE, words_per_minute, 0)
        data = text.encode("utf-8")
        self._chunks = []
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise TTSError(text, "synth_failed", f"espeak_Synth returned {err}")
        self.lib.espeak_Synchronize()
        chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32) / 32768.0


def _espeak_voice_name(voice: str) -> str:
    base, plus, variant = voice.partition("+")
    return _VOICE_ALIASES.get(base.lower(), base) + plus + variant


def _get_engine() -> _Engine:
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


class EspeakBackend:
    """Offline espeak-ng voice; voice names like 'en-us', 'en-gb', 'en-us+f3' (variants vary the speaker)."""

    name = "espeak"

    def __init__(self, words_per_minute: int = 165) -> None:
        self.words_per_minute = int(words_per_minute)
        with _lock:
            self.sample_rate_hz = _get_engine().sample_rate_hz

    def synthesize(self, text: str, voice: str) -> np.ndarray:
        """Speak `text` with espeak voice `voice`; float32 mono at `sample_rate_hz` (22050 Hz)."""
        clean = check_text(text)
        with _lock:
            wave = _get_engine().speak(clean, voice, self.words_per_minute)
        if wave.size == 0 or not np.any(wave):
            raise TTSError(text, "no_audio", f"espeak-ng produced no samples with voice {voice}")
        return wave

    def voices(self) -> list[str]:
        """A few English voices and speaker variants that the bundled data provides."""
        return list(DEFAULT_VOICES)
