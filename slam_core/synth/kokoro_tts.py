"""Kokoro-82M (hexgrad/Kokoro-82M) from a local directory or the hub, with espeak-ng G2P (no spaCy model).

Local directory layout: `config.json`, one `*.pth` state dict (`kokoro-v1_0.pth` in the release) and
`voices/<name>.pt` style tensors of shape (510, 1, 256). Output is 24 kHz mono float32.

Kokoro's stock English G2P downloads a spaCy model at start-up, so text is phonemised with
`misaki.espeak.EspeakG2P` (en-us, or en-gb for British 'b*' voices) and fed to `KModel` sentence by
sentence (each must fit the model's phoneme context). The decoder draws noise, so each call seeds torch
from (voice, text) under a lock: the same text and voice give the same samples.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import zlib
from pathlib import Path

import numpy as np

from slam_core.synth.base import TTSError, TTSSetupError, check_text

log = logging.getLogger(__name__)

KOKORO_HUB_ID = "hexgrad/Kokoro-82M"
KOKORO_WEIGHTS_FILE = "kokoro-v1_0.pth"
KOKORO_SAMPLE_RATE_HZ = 24_000
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_PAUSE_BETWEEN_SENTENCES_S = 0.3


def _missing_model_error(source: str, err: Exception) -> TTSSetupError:
    return TTSSetupError(
        f"Kokoro model not available from {source!r} ({type(err).__name__}: {str(err).splitlines()[0][:160]}). "
        f"Download {KOKORO_HUB_ID} (https://huggingface.co/{KOKORO_HUB_ID}) while online, or set "
        f"synth.kokoro_model to a local directory with config.json, {KOKORO_WEIGHTS_FILE} and voices/<name>.pt"
    )


def resolve_kokoro_files(model: str) -> tuple[Path, Path, Path | None]:
    """(config.json, weights .pth, voices dir or None for hub voices) for a local dir or a hub id."""
    local = Path(model).expanduser()
    if local.is_dir():
        config = local / "config.json"
        weights = local / KOKORO_WEIGHTS_FILE
        if not weights.exists():
            weights = next(iter(sorted(local.glob("*.pth"))), weights)
        for need in (config, weights):
            if not need.exists():
                raise _missing_model_error(str(local), FileNotFoundError(f"no {need.name} in {local}"))
        return config, weights, local / "voices"
    try:
        from huggingface_hub import hf_hub_download

        config = Path(hf_hub_download(repo_id=model, filename="config.json"))
        weights = Path(hf_hub_download(repo_id=model, filename=KOKORO_WEIGHTS_FILE))
    except Exception as err:  # offline, missing repo, missing file: all mean "not available"
        raise _missing_model_error(model, err) from None
    return config, weights, None


class KokoroBackend:
    """Kokoro-82M voices; `voice` is a voice id ('af_heart' -> voices/af_heart.pt) or a path to a .pt file."""

    name = "kokoro"
    sample_rate_hz = KOKORO_SAMPLE_RATE_HZ

    def __init__(self, model: str = KOKORO_HUB_ID, speed: float = 1.0) -> None:
        import torch

        self.model_source = model
        self.speed = float(speed)
        config_path, weights_path, self._voices_dir = resolve_kokoro_files(model)
        try:
            from kokoro.model import KModel
        except ImportError as err:
            raise TTSSetupError(f"kokoro backend needs the 'kokoro' and 'misaki' packages: {err}") from None
        hub_id = model if self._voices_dir is None else KOKORO_HUB_ID  # repo_id only silences a warning
        self._config = json.loads(config_path.read_text(encoding="utf-8"))
        try:
            self._model = KModel(repo_id=hub_id, config=str(config_path), model=str(weights_path)).eval()
        except (RuntimeError, KeyError, AssertionError) as err:
            raise TTSSetupError(f"cannot load Kokoro weights {weights_path}: {err}") from None
        self._torch = torch
        self._g2p: dict[str, object] = {}
        self._voice_cache: dict[str, "torch.Tensor"] = {}
        self._lock = threading.Lock()

    def voices(self) -> list[str]:
        """Voice ids found in the local voices/ directory (hub: none listed, ids are fetched on use)."""
        if self._voices_dir is None or not self._voices_dir.is_dir():
            return []
        return sorted(p.stem for p in self._voices_dir.glob("*.pt"))

    def check_voice(self, voice: str) -> None:
        """Raise TTSSetupError if the voice tensor cannot be loaded (hub voices are fetched here)."""
        with self._lock:
            self._load_voice(voice)

    def synthesize(self, text: str, voice: str) -> np.ndarray:
        """Speak `text` sentence by sentence with `voice`; float32 mono at 24 kHz."""
        clean = check_text(text)
        with self._lock:
            pack = self._load_voice(voice)
            g2p = self._get_g2p(voice)
            pieces = []
            pause = np.zeros(int(_PAUSE_BETWEEN_SENTENCES_S * self.sample_rate_hz), dtype=np.float32)
            for sentence in _SENTENCE_END.split(clean):
                if pieces:
                    pieces.append(pause)
                pieces.append(self._speak_sentence(sentence, voice, pack, g2p))
        wave = np.concatenate(pieces)
        if not np.isfinite(wave).all() or not np.any(wave):
            raise TTSError(text, "no_audio", f"Kokoro produced silent or non-finite audio with voice {voice}")
        return wave

    def _speak_sentence(self, sentence: str, voice: str, pack, g2p) -> np.ndarray:
        phonemes, _ = g2p(sentence)
        phonemes = "".join(p for p in phonemes if p in self._model.vocab)
        if not phonemes.strip():
            raise TTSError(sentence, "unpronounceable", "no phonemes in Kokoro's vocabulary")
        if len(phonemes) + 2 > self._model.context_length:
            raise TTSError(sentence, "too_long", f"{len(phonemes)} phonemes > {self._model.context_length - 2}")
        seed = zlib.crc32(f"{Path(voice).stem}\n{sentence}".encode())  # voice id or its .pt path: same seed
        with self._torch.random.fork_rng(devices=[]):
            self._torch.manual_seed(seed)
            audio = self._model(phonemes, pack[len(phonemes) - 1], self.speed)
        return audio.float().numpy().astype(np.float32)

    def _get_g2p(self, voice: str):
        language = "en-gb" if Path(voice).name.startswith("b") else "en-us"
        if language not in self._g2p:
            from misaki.espeak import EspeakG2P

            self._g2p[language] = EspeakG2P(language=language)
        return self._g2p[language]

    def _load_voice(self, voice: str):
        if voice not in self._voice_cache:
            path = self._voice_path(voice)
            try:
                pack = self._torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:
                raise TTSSetupError(f"cannot load Kokoro voice {voice!r} from {path}: {err}") from None
            if pack.ndim != 3 or pack.shape[-1] != 256:
                raise TTSSetupError(f"Kokoro voice {path} has shape {tuple(pack.shape)}, expected (510, 1, 256)")
            self._voice_cache[voice] = pack.float()
        return self._voice_cache[voice]

    def _voice_path(self, voice: str) -> Path:
        if voice.endswith(".pt"):
            return Path(voice).expanduser()
        if self._voices_dir is not None:
            path = self._voices_dir / f"{voice}.pt"
            if not path.exists():
                raise TTSSetupError(f"no Kokoro voice {voice!r}: {path} does not exist (have {self.voices()})")
            return path
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo_id=self.model_source, filename=f"voices/{voice}.pt"))
        except Exception as err:
            raise _missing_model_error(f"{self.model_source} voices/{voice}.pt", err) from None
