"""The backend factory: the TTS backend named by the config.

It lives apart from the interface (`slam_core.synth.base`) because it imports the implementations, which
import the interface. Each implementation is imported only when it is asked for, so building the espeak
backend never imports torch or Kokoro.
"""

from __future__ import annotations

from slam_core.config import SynthConfig
from slam_core.synth.base import TTSBackend, TTSSetupError


def get_backend(cfg: SynthConfig) -> TTSBackend:
    """Build the backend named by `cfg.backend` (espeak-ng through ctypes, or Kokoro-82M) and check
    every voice in `cfg.voices` up front, so a bad voice fails before any audio is made."""
    backend: TTSBackend
    if cfg.backend == "espeak":
        from slam_core.synth.espeak import EspeakBackend

        backend = EspeakBackend(words_per_minute=cfg.words_per_minute)
    elif cfg.backend == "kokoro":
        from slam_core.device import pick_device  # imports torch: only Kokoro needs it
        from slam_core.synth.kokoro_g2p import auto_g2p_workers
        from slam_core.synth.kokoro_tts import KokoroBackend

        device = pick_device(cfg.device).type
        g2p_workers = cfg.kokoro_g2p_workers
        backend = KokoroBackend(cfg.kokoro_model, speed=cfg.kokoro_speed, device=device,
                                batch_size=cfg.kokoro_batch_size, max_batch_tokens=cfg.kokoro_max_batch_tokens,
                                dtype=cfg.kokoro_dtype,
                                g2p_workers=auto_g2p_workers(device, cfg.workers) if g2p_workers is None else g2p_workers)
    else:
        raise TTSSetupError(f"unknown TTS backend {cfg.backend!r} (expected 'espeak' or 'kokoro')")
    for voice in cfg.voices:
        backend.check_voice(voice)
    return backend
