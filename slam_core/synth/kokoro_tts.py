"""Kokoro-82M (hexgrad/Kokoro-82M) from a local directory or the hub, with espeak-ng G2P (no spaCy model).

Local directory layout: `config.json`, one `*.pth` state dict (`kokoro-v1_0.pth` in the release) and
`voices/<name>.pt` style tensors of shape (510, 1, 256). Output is 24 kHz mono float32.

Kokoro's stock English G2P downloads a spaCy model at start-up, so text is phonemised with
`misaki.espeak.EspeakG2P` (en-us, or en-gb for British 'b*' voices) and fed to `KModel` sentence by
sentence (a sentence over the model's phoneme context is cut at a clause mark or word boundary).
Sentences of many requests run together through the masked batched forward of `kokoro_batch`; the decoder
noise of each sentence is seeded from (voice, text), so the same text and voice give the same samples
whichever batch they land in (to float rounding; alone, bit for bit the stock `KModel.forward`).

Two steps: the CPU step (`kokoro_g2p`: G2P, context cuts, seeds) runs in `g2p_workers` spawned processes
(0: in this process), the GPU step here. `synthesize_aligned_stream` takes a sequence of calls and keeps the
G2P of the next `lookahead` calls running in the workers while the model speaks the current one, so G2P
does not hold up the GPU; each call's parts are length-sorted into batches exactly as a lone
`synthesize_aligned_batch` call sorts them, so the audio is the same bytes whatever the worker count.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from slam_core.synth.base import TTSError, TTSSetupError, check_text
from slam_core.synth.kokoro_batch import KokoroItem, forward_batch
from slam_core.synth.kokoro_g2p import G2PSpec, G2PWorkers, PendingPlan, get_g2p

log = logging.getLogger(__name__)

KOKORO_HUB_ID = "hexgrad/Kokoro-82M"
KOKORO_WEIGHTS_FILE = "kokoro-v1_0.pth"
KOKORO_SAMPLE_RATE_HZ = 24_000
_PAUSE_BETWEEN_SENTENCES_S = 0.3
AlignedOrError = Union[tuple[np.ndarray, list[tuple[str, float, float]]], TTSError]


@dataclass
class _Part:
    """One model call's worth of a request: a sentence, or a cut of one that exceeds the context."""

    request: int
    words: list[tuple[str, str]]
    item: KokoroItem


def _length_batches(order: list[int], lengths: list[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Consecutive runs of `order` (sorted by length) with at most `batch_size` items and at most
    `max_tokens` padded tokens (items x longest) each; an item longer than `max_tokens` goes alone."""
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and \
                (len(batches[-1]) + 1) * max(lengths[i], *(lengths[j] for j in batches[-1])) <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _missing_model_error(source: str, err: Exception) -> TTSSetupError:
    return TTSSetupError(
        f"Kokoro model not available from {source!r} ({type(err).__name__}: {str(err).splitlines()[0][:160]}). "
        f"Download {KOKORO_HUB_ID} (https://huggingface.co/{KOKORO_HUB_ID}) while online, or set "
        f"synth.kokoro_model to a local directory with config.json, {KOKORO_WEIGHTS_FILE} and voices/<name>.pt"
    )


def import_kmodel() -> type:
    """kokoro's `KModel` class. The package's `__init__` also imports its English pipeline (misaki.en, which
    imports spaCy), which slam never uses: G2P is misaki's espeak module. Where spaCy is not installed (an
    offline GPU host that carries only the wheels slam needs), the model module is imported without running
    the package `__init__`."""
    try:
        from kokoro.model import KModel

        return KModel
    except ImportError as err:
        spec = importlib.util.find_spec("kokoro") if "kokoro" not in sys.modules else None
        if spec is None or spec.submodule_search_locations is None:
            raise
        log.info("kokoro's package init failed (%s); importing kokoro.model on its own", err)
        sys.modules["kokoro"] = importlib.util.module_from_spec(spec)  # the package, its __init__ not run
        try:
            from kokoro.model import KModel
            from loguru import logger

            logger.disable("kokoro")  # what the package __init__ does: no debug lines on stderr
        except ImportError:
            del sys.modules["kokoro"]
            raise err from None
        return KModel


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

    def __init__(self, model: str = KOKORO_HUB_ID, speed: float = 1.0, device: str = "cpu",
                 batch_size: int = 1, max_batch_tokens: int = 8192, dtype: str = "float32",
                 g2p_workers: int = 0) -> None:
        import torch

        self.model_source = model
        self.speed = float(speed)
        self.batch_size = int(batch_size)
        self.max_batch_tokens = int(max_batch_tokens)
        config_path, weights_path, self._voices_dir = resolve_kokoro_files(model)
        try:
            KModel = import_kmodel()
        except ImportError as err:
            raise TTSSetupError(f"kokoro backend needs the 'kokoro' and 'misaki' packages: {err}") from None
        hub_id = model if self._voices_dir is None else KOKORO_HUB_ID  # repo_id only silences a warning
        self._config = json.loads(config_path.read_text(encoding="utf-8"))
        try:
            self._model = KModel(repo_id=hub_id, config=str(config_path), model=str(weights_path)).eval()
            self._device = torch.device("cuda" if device == "cuda" and torch.cuda.is_available() else "cpu")
            self._model = self._model.to(self._device)
        except (RuntimeError, KeyError, AssertionError) as err:
            raise TTSSetupError(f"cannot load Kokoro weights {weights_path}: {err}") from None
        self._torch = torch
        # reduced precision only where autocast has kernels for it: CUDA (the CPU computes in float32)
        self._autocast = getattr(torch, dtype) if dtype != "float32" and self._device.type == "cuda" else None
        self._voice_cache: dict[str, "torch.Tensor"] = {}
        self._lock = threading.Lock()  # one model call (and in-process G2P: espeak is a process singleton) at a time
        self._voice_lock = threading.Lock()
        self.g2p = G2PWorkers(G2PSpec(dict(self._model.vocab), int(self._model.context_length)), g2p_workers)
        self.stream_stats: dict[str, float] = {}
        """Of the last stream (or batch call): seconds waited for G2P results, seconds of the GPU step, calls."""

    def voices(self) -> list[str]:
        """Voice ids found in the local voices/ directory (hub: none listed, ids are fetched on use)."""
        if self._voices_dir is None or not self._voices_dir.is_dir():
            return []
        return sorted(p.stem for p in self._voices_dir.glob("*.pt"))

    def check_voice(self, voice: str) -> None:
        """Raise TTSSetupError if the voice tensor cannot be loaded (hub voices are fetched here)."""
        with self._voice_lock:
            self._load_voice(voice)

    def close(self) -> None:
        """Stop the G2P worker processes (they start again on the next call)."""
        self.g2p.close()

    def synthesize(self, text: str, voice: str) -> np.ndarray:
        """Speak `text` sentence by sentence with `voice`; float32 mono at 24 kHz."""
        return self.synthesize_aligned(text, voice)[0]

    def synthesize_aligned(self, text: str, voice: str) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        """Speak `text` and time its words from the model's predicted phoneme durations:
        (samples, [(word, start_s, end_s)]). A sentence over the phoneme limit is cut at a clause mark or
        word boundary and spoken in parts; words without phonemes in Kokoro's vocabulary get no timing."""
        result = self.synthesize_aligned_batch([(text, voice)])[0]
        if isinstance(result, TTSError):
            raise result
        return result

    def synthesize_aligned_batch(self, requests: Sequence[tuple[str, str]]) -> list[AlignedOrError]:
        """`synthesize_aligned` for many (text, voice) requests at once: their sentence parts are sorted by
        length and run `batch_size` at a time through one masked forward. Each result is (samples, words)
        or the TTSError that request alone raises; one bad request never fails the others."""
        return list(self.synthesize_aligned_stream([requests], lookahead=0))[0]

    def synthesize_aligned_stream(self, calls: Iterable[Sequence[tuple[str, str]]],
                                  lookahead: int = 2) -> Iterator[list[AlignedOrError]]:
        """`synthesize_aligned_batch(call)` for each call in turn, the G2P of up to `lookahead` later calls
        running in the worker processes meanwhile (calls are read lazily). A voice that cannot be loaded
        raises TTSSetupError when its call's turn comes; `stream_stats` says how long the GPU step waited."""
        stats = self.stream_stats = {"g2p_wait_s": 0.0, "gpu_s": 0.0, "calls": 0}
        calls = iter(calls)
        pending: deque = deque()
        try:
            while True:
                while len(pending) <= lookahead:
                    call = next(calls, None)
                    if call is None:
                        break
                    try:
                        pending.append(self._start_call(list(call)))
                    except TTSSetupError as err:
                        pending.append(err)
                if not pending:
                    return
                started = pending.popleft()
                if isinstance(started, TTSSetupError):
                    raise started
                spoken = self._finish_call(*started, stats)
                stats["calls"] += 1
                yield spoken
        finally:
            for started in pending:
                if not isinstance(started, TTSSetupError):
                    started[2].cancel()

    def _start_call(self, requests: list[tuple[str, str]]) -> tuple[list, list, PendingPlan]:
        """Check the texts, load the voices, start the CPU step: (requests, results so far, pending plans)."""
        results: list[AlignedOrError | None] = [None] * len(requests)
        jobs = []
        for index, (text, voice) in enumerate(requests):
            try:
                check_text(text)
            except TTSError as err:
                results[index] = err
                continue
            with self._voice_lock:
                self._load_voice(voice)
            jobs.append((index, text, voice))
        return requests, results, self.g2p.submit(jobs)

    def _finish_call(self, requests: list[tuple[str, str]], results: list, pending: PendingPlan,
                     stats: dict[str, float]) -> list[AlignedOrError]:
        """The GPU step of one call: its planned parts with their voice rows, spoken, joined per request."""
        parts: list[_Part] = []
        with self._lock:
            t0 = time.perf_counter()
            plans = pending.result()
            stats["g2p_wait_s"] += time.perf_counter() - t0
            for (index, _, voice), planned in zip(pending.jobs, plans):
                if isinstance(planned, TTSError):
                    results[index] = planned
                    continue
                pack = self._voice_cache[voice]
                parts += [_Part(p.request, p.words, KokoroItem(p.input_ids, pack[p.pack_row], p.seed)) for p in planned]
            t0 = time.perf_counter()
            spoken = self._speak_parts(parts)
            stats["gpu_s"] += time.perf_counter() - t0
        pieces: dict[int, list[tuple[np.ndarray, list]]] = {}
        for part, outcome in zip(parts, spoken):
            if isinstance(outcome, TTSError):
                results[part.request] = outcome
            else:
                pieces.setdefault(part.request, []).append(outcome)
        for index, spoken_parts in pieces.items():
            if results[index] is None:  # every part spoken
                results[index] = self._join_parts(requests[index], spoken_parts)
        return [r if r is not None else TTSError(requests[i][0], "unpronounceable",
                                                 "no phonemes in Kokoro's vocabulary")
                for i, r in enumerate(results)]

    def _speak_parts(self, parts: list[_Part]) -> list[tuple[np.ndarray, list] | TTSError]:
        """Audio and word spans per part, batched by length; a failing batch is retried one part at a time
        so the error lands on the part that causes it."""
        outcomes: list[tuple[np.ndarray, list] | TTSError | None] = [None] * len(parts)
        order = sorted(range(len(parts)), key=lambda i: len(parts[i].item.input_ids))
        for batch in _length_batches(order, [len(p.item.input_ids) for p in parts], self.batch_size,
                                     self.max_batch_tokens):
            try:
                done = forward_batch(self._model, [parts[i].item for i in batch], self.speed, self._autocast)
            except (RuntimeError, ValueError) as err:
                if len(batch) > 1:
                    for i in batch:
                        outcomes[i] = self._speak_parts([parts[i]])[0]
                else:
                    outcomes[batch[0]] = TTSError(" ".join(w for w, _ in parts[batch[0]].words), "synth_failed",
                                                  f"{type(err).__name__}: {err}")
                continue
            for i, (audio, durations) in zip(batch, done):
                outcomes[i] = self._word_spans(parts[i].words, audio, durations)
        return outcomes  # type: ignore[return-value]

    def _join_parts(self, request: tuple[str, str], pieces: list) -> AlignedOrError:
        """One request's parts in order, 0.3 s apart, with word times shifted to their place."""
        rate = self.sample_rate_hz
        pause = np.zeros(int(_PAUSE_BETWEEN_SENTENCES_S * rate), dtype=np.float32)
        waves: list[np.ndarray] = []
        words: list[tuple[str, float, float]] = []
        offset = 0
        for audio, spans in pieces:
            if waves:
                waves.append(pause)
                offset += len(pause)
            words += [(w, (offset + a) / rate, (offset + b) / rate) for w, a, b in spans]
            waves.append(audio)
            offset += len(audio)
        wave = np.concatenate(waves)
        if not np.isfinite(wave).all() or not np.any(wave):
            return TTSError(request[0], "no_audio", f"Kokoro produced silent or non-finite audio with voice {request[1]}")
        return wave, words

    @staticmethod
    def _word_spans(words: list[tuple[str, str]], audio, durations) -> tuple[np.ndarray, list]:
        """Samples and (word, first, last) sample spans from the predicted per-token durations."""
        audio = audio.float().cpu().numpy().astype(np.float32)
        frames = np.concatenate([[0], np.cumsum(durations.cpu().numpy().reshape(-1))])
        samples_per_frame = len(audio) / max(1, frames[-1])
        spans, char = [], 0
        for word, ps in words:
            start, end = char, char + len(ps)  # phoneme k is model input k + 1 (BOS first)
            first = min(len(audio), int(round(frames[start + 1] * samples_per_frame)))
            last = min(len(audio), int(round(frames[end + 1] * samples_per_frame)))
            if word:
                spans.append((word, first, last))
            char = end + 1
        return audio, spans

    @staticmethod
    def _get_g2p(voice: str):
        """This process's G2P for the voice's language (the CPU step uses the same one in each worker)."""
        return get_g2p(voice)

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
