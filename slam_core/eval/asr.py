"""Whisper ASR for GenPPL and the LLM judge (openai-whisper; docs/published-artifacts.md, docs/offline-standins.md).

Audio is passed as float32 16 kHz arrays, so no ffmpeg is needed. SlamKit uses the HF pipeline of
`openai/whisper-large-v3-turbo`; the same weights load here through openai-whisper's `large-v3-turbo` name or a
local checkpoint file ({"dims", "model_state_dict"}).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slam_core.device import pick_device
from slam_core.offline import offline

log = logging.getLogger(__name__)

DEFAULT_ASR_MODEL = "large-v3-turbo"
ASR_SAMPLE_RATE_HZ = 16_000


class AsrModelNotFoundError(FileNotFoundError):
    """A Whisper model that is neither a local file nor available without a download here."""


def _whisper_cache_dir() -> Path:
    return Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"


def load_asr(
    name_or_path: str | Path = DEFAULT_ASR_MODEL, device: str | torch.device = "cpu",
    allow_download: bool | None = None,
) -> Any:
    """A Whisper model from an official name (`large-v3-turbo`, `tiny`, ...) or a local checkpoint file.

    Official names load from the whisper cache (~/.cache/whisper); a download is attempted only when
    `allow_download` (default: not offline, see slam_core/offline.py). Anything missing raises one
    `AsrModelNotFoundError` naming the URL and the local-file option.
    """
    import whisper

    source = str(name_or_path)
    allow_download = (not offline()) if allow_download is None else allow_download
    local = Path(source).expanduser()
    if local.is_file():
        source = str(local)
    elif source in whisper._MODELS:
        url = whisper._MODELS[source]
        cached = _whisper_cache_dir() / os.path.basename(url)
        if not cached.is_file() and not allow_download:
            raise AsrModelNotFoundError(
                f"Whisper '{source}': not in the cache ({cached}) and downloads are off (offline). Download {url} "
                f"into {cached.parent}, or pass a local checkpoint file path.")
    else:
        raise AsrModelNotFoundError(
            f"Whisper model '{source}': no such file and not an official name {whisper.available_models()}; "
            "pass a local checkpoint file ({'dims', 'model_state_dict'}) or an official name.")
    device = pick_device(device) if isinstance(device, str) else device
    try:
        model = whisper.load_model(source, device=str(device))
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as err:
        # URLError is an OSError; a corrupt or foreign file fails in torch.load or in the dims/state-dict lookup
        raise AsrModelNotFoundError(
            f"Whisper '{source}': cannot load ({type(err).__name__}: {err}). Pass a local checkpoint file, or "
            f"place the official file in {_whisper_cache_dir()}.") from None
    return model.eval()


WINDOW_S = 30  # Whisper's fixed input window


@torch.no_grad()
def transcribe(
    model: Any, waves_16k: Sequence[np.ndarray], language: str | None = None, batch_size: int = 8,
    max_tokens: int | None = None,
) -> list[str]:
    """Transcripts of 16 kHz mono waves; greedy (temperature 0, no fallback), fp16 only on CUDA.

    `language` None: a multilingual Whisper detects the language of each wave (SlamKit forces none); an
    English-only one has no language tokens and transcribes English.

    Waves up to 30 s (all generations) are decoded in batches as one padded window each, without timestamps;
    longer waves go through whisper's sliding-window `transcribe`. `max_tokens` caps the decoded tokens per
    window (whisper's default: n_text_ctx // 2). An empty wave gives "" without running the model.
    """
    if language is None and not model.is_multilingual:
        language = "en"
    audios = [np.ascontiguousarray(w, dtype=np.float32).reshape(-1) for w in waves_16k]
    texts = [""] * len(audios)
    short = [i for i, a in enumerate(audios) if 0 < a.size <= WINDOW_S * ASR_SAMPLE_RATE_HZ]
    for start in range(0, len(short), batch_size):
        idx = short[start:start + batch_size]
        for i, text in zip(idx, _decode_windows(model, [audios[i] for i in idx], language, max_tokens)):
            texts[i] = text
    fp16 = next(model.parameters()).device.type == "cuda"
    for i, audio in enumerate(audios):
        if audio.size > WINDOW_S * ASR_SAMPLE_RATE_HZ:
            result = model.transcribe(audio, language=language, temperature=0.0, fp16=fp16, verbose=None,
                                      sample_len=max_tokens)
            texts[i] = str(result["text"])  # as Whisper gives it (leading space kept, as SlamKit)
    log.info("transcribed %d waves (%d empty transcripts)", len(texts), sum(1 for t in texts if not t))
    return texts


def _decode_windows(model: Any, audios: list[np.ndarray], language: str | None, max_tokens: int | None) -> list[str]:
    import whisper

    device = next(model.parameters()).device
    mels = torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(a)), model.dims.n_mels)
                        for a in audios]).to(device)
    options = whisper.DecodingOptions(task="transcribe", language=language, temperature=0.0, sample_len=max_tokens,
                                      without_timestamps=True, fp16=device.type == "cuda")
    tokenizer = whisper.tokenizer.get_tokenizer(model.is_multilingual, num_languages=model.num_languages,
                                                language=language, task="transcribe")
    # text tokens only, as whisper's own transcribe does: special tokens never reach the transcript
    return [tokenizer.decode([t for t in r.tokens if t < tokenizer.eot]) for r in whisper.decode(model, mels, options)]
