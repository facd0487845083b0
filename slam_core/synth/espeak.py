"""espeak-ng through the shared library of the `espeakng-loader` wheel (ctypes, synchronous mode).

espeak-ng is a process-wide singleton, so every call holds a module lock while it loads the library,
sets voice and rate, and collects the samples its callback delivers. Output: 16-bit mono at 22050 Hz.
Reloading per utterance (see `_Engine`) makes the same text, voice and rate give the same samples.
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import logging
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from slam_core.synth.base import TTSError, TTSSetupError, check_text

log = logging.getLogger(__name__)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_EE_OK = 0
_RAND_SEED = 1234
DEFAULT_VOICES = ("en-us", "en-gb", "en-us+f3", "en-us+m3", "en-gb+f4", "en-us+m7")
# espeak-ng names British English plain "en"; accept the usual language tag too.
_VOICE_ALIASES = {"en-gb": "en"}

_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_END = 5  # end of a clause or sentence
_EVENT_MSG_TERMINATED = 6


class _Event(ctypes.Structure):
    """espeak_EVENT (speak_lib.h): word events carry the word's character span and its first sample."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))

_lock = threading.Lock()
_engine: "_Engine | None" = None


class _Engine:
    """espeak-ng loaded from a private copy of the wheel's library, reloaded for every utterance.

    espeak-ng keeps synthesis state in static variables (e.g. the pitch flutter phase) that carry over
    between utterances and even survive espeak_Terminate/espeak_Initialize, so the same text would
    come out a sample or two different depending on what was spoken before. Unloading and
    reloading the library (about 7 ms) resets all of it. The copy makes sure no other user of the same
    file (phonemizer, misaki) keeps it mapped, which would make the unload a no-op.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise TTSSetupError(
                "espeak backend needs the 'espeakng-loader' package (pip install espeakng-loader), "
                "which ships libespeak-ng and its voice data"
            ) from None
        source = Path(espeakng_loader.get_library_path())
        try:
            self.data_path = espeakng_loader.get_data_path().encode()
            private_dir = Path(tempfile.mkdtemp(prefix="slam-espeak-"))
            atexit.register(shutil.rmtree, private_dir, True)
            self.lib_path = str(shutil.copy(source, private_dir / "libespeak-ng-slam.so"))
            self.sample_rate_hz = self._with_library(lambda lib: lib.espeak_ng_GetSampleRate())
        except (OSError, RuntimeError) as err:
            raise TTSSetupError(f"cannot load espeak-ng from {source}: {err}") from None
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int]] = []  # (type, text_position, length, sample)
        # Keep a reference: ctypes frees the trampoline when the Python object dies.
        self._callback = _SYNTH_CALLBACK(self._collect)

    def _with_library(self, use):
        lib = ctypes.CDLL(self.lib_path)
        try:
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path, _INITIALIZE_DONT_EXIT)
            if rate <= 0:
                raise TTSSetupError(f"espeak-ng failed to initialise with data at {self.data_path!r} (code {rate})")
            # espeak_Initialize seeds espeak's noise generator (voice variants' breath, consonants)
            # from the clock: a fixed seed keeps the samples independent of when they were made.
            lib.espeak_ng_SetRandSeed(ctypes.c_long(_RAND_SEED))
            try:
                return use(lib)
            finally:
                lib.espeak_Terminate()
        finally:
            handle = lib._handle
            del lib
            _ctypes.dlclose(handle)

    def _collect(self, wav, n_samples: int, events) -> int:
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        i = 0
        while events and events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type in (_EVENT_WORD, _EVENT_END, _EVENT_MSG_TERMINATED):
                self._events.append((ev.type, ev.text_position, ev.length, ev.sample))
            i += 1
        return 0  # 0 = continue synthesis

    def speak(self, text: str, voice: str, words_per_minute: int) -> np.ndarray:
        return self._with_library(lambda lib: self._speak(lib, text, voice, words_per_minute))[0]

    def speak_with_events(self, text: str, voice: str, words_per_minute: int):
        """(samples, [(event type, 1-based character position, length, sample index)])."""
        return self._with_library(lambda lib: self._speak(lib, text, voice, words_per_minute))

    def check_voice(self, voice: str) -> None:
        self._with_library(lambda lib: _set_voice(lib, voice))

    def _speak(self, lib, text: str, voice: str, words_per_minute: int) -> tuple[np.ndarray, list]:
        lib.espeak_SetSynthCallback(self._callback)
        _set_voice(lib, voice)
        lib.espeak_SetParameter(_PARAM_RATE, words_per_minute, 0)
        data = text.encode("utf-8")
        self._chunks, self._events = [], []
        err = lib.espeak_Synth(ctypes.c_char_p(data), ctypes.c_size_t(len(data) + 1), 0, 0, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise TTSError(text, "synth_failed", f"espeak_Synth returned {err}")
        lib.espeak_Synchronize()
        chunks, self._chunks = self._chunks, []
        events, self._events = self._events, []
        if not chunks:
            return np.zeros(0, dtype=np.float32), events
        return np.concatenate(chunks).astype(np.float32) / 32768.0, events


def _set_voice(lib, voice: str) -> None:
    if lib.espeak_SetVoiceByName(_espeak_voice_name(voice).encode()) != _EE_OK:
        raise TTSSetupError(f"espeak-ng has no voice {voice!r} (try en-us, en-gb, en-us+f3, en-us+m3)")


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

    def synthesize_aligned(self, text: str, voice: str) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        """Speak `text` and time its words from espeak's WORD events: (samples, [(word, start_s, end_s)]).

        A word ends where the next word (or the clause end) starts, so pauses after a word count to it.
        Events inside a word's span (espeak reads "42" as two words) are merged into that word.
        """
        clean = check_text(text)
        with _lock:
            wave, events = _get_engine().speak_with_events(clean, voice, self.words_per_minute)
        if wave.size == 0 or not np.any(wave):
            raise TTSError(text, "no_audio", f"espeak-ng produced no samples with voice {voice}")
        return wave, words_from_events(clean, events, len(wave), self.sample_rate_hz)

    def check_voice(self, voice: str) -> None:
        """Raise TTSSetupError if espeak-ng has no voice `voice`."""
        with _lock:
            _get_engine().check_voice(voice)

    def voices(self) -> list[str]:
        """A few English voices and speaker variants that the bundled data provides."""
        return list(DEFAULT_VOICES)


def words_from_events(text: str, events: list[tuple[int, int, int, int]], n_samples: int,
                      sample_rate_hz: int) -> list[tuple[str, float, float]]:
    """Word timings from espeak events (type, 1-based char position, length, first sample)."""
    words: list[list] = []  # [char start, char end, start sample, end sample]
    for kind, position, length, sample in events:
        sample = min(max(sample, 0), n_samples)
        if words and words[-1][3] is None and kind != _EVENT_WORD:
            words[-1][3] = sample
        if kind != _EVENT_WORD:
            continue
        start = position - 1
        if words and start < words[-1][1]:  # a second event inside the same written word
            words[-1][1] = max(words[-1][1], start + length)
            continue
        if words and words[-1][3] is None:
            words[-1][3] = sample
        words.append([start, start + length, sample, None])
    out = []
    for start, end, first, last in words:
        last = n_samples if last is None else max(last, first)
        out.append((text[start:end].strip(), first / sample_rate_hz, last / sample_rate_hz))
    return out
