"""The CPU step of Kokoro synthesis: text -> model inputs, in this process or in a pool of G2P worker processes.

A request (text, voice) becomes one part per sentence (a sentence over the model's phoneme context is cut at a
clause mark or word boundary): its (word, phonemes) pairs from misaki's espeak G2P (en-us, or en-gb for British
'b*' voices), its phoneme token ids with BOS/EOS, the voice-pack row to use (phoneme count - 1) and the seed of
its decoder noise (from the voice id and the spoken words). Parts are plain data, so worker processes return
them pickled; the GPU step (`KokoroBackend`) adds the style row of its cached voice pack and runs them.

G2P is deterministic, and a request's parts come back in request order whichever worker made them, so the
model sees the same inputs with 0, 1 or N workers. Workers import neither torch nor the model: only misaki,
espeak and this module (spawned processes, started on first use).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import zlib
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from slam_core.synth.base import TTSError, check_text

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class G2PSpec:
    """What the CPU step needs from the model: its phoneme vocabulary and context length (BOS/EOS included)."""

    vocab: dict[str, int]
    context_length: int


@dataclass
class PlannedPart:
    """One model call's worth of a request, without the style vector (picklable)."""

    request: int
    words: list[tuple[str, str]]
    """(written word, its phonemes); a word cut across parts keeps its text in the first part only."""
    input_ids: list[int]
    """Phoneme token ids with the BOS/EOS 0 at both ends."""
    pack_row: int
    """Row of the voice pack (510, 1, 256) giving the style vector: the phoneme count minus one."""
    seed: int
    """Seed of the decoder noise: crc32 of the voice id and the spoken words."""


PlanOrError = Union[list[PlannedPart], TTSError]
_g2p: dict[str, object] = {}  # language -> misaki EspeakG2P, one per process
_spec: G2PSpec | None = None  # set in each worker process by the pool initializer


def language_of(voice: str) -> str:
    """espeak language of a Kokoro voice id or .pt path: en-gb for British 'b*' voices, else en-us."""
    return "en-gb" if Path(voice).name.startswith("b") else "en-us"


def get_g2p(voice: str):
    """This process's misaki EspeakG2P for the voice's language (made on first use)."""
    language = language_of(voice)
    if language not in _g2p:
        from misaki.espeak import EspeakG2P

        _g2p[language] = EspeakG2P(language=language)
    return _g2p[language]


def phonemize_words(sentence: str, g2p, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """(word, phonemes) per written word. espeak sometimes merges words ("of the" -> one phoneme word)
    or splits one ("42"); then each word is phonemised alone so its phonemes stay its own."""
    written = sentence.split()
    spoken = g2p(sentence)[0].split()
    if len(spoken) != len(written):
        spoken = [g2p(w)[0] for w in written]
    return [(w, "".join(ch for ch in ps if ch in vocab).strip()) for w, ps in zip(written, spoken)]


def fit_context(words: list[tuple[str, str]], context_length: int) -> list[list[tuple[str, str]]]:
    """Split a sentence's words until each part's phonemes fit the model context (BOS + EOS included):
    at the clause mark nearest the middle, else at the middle word."""
    words = [(w, ps) for w, ps in words if ps]
    if not words:
        return []
    if len(" ".join(ps for _, ps in words)) + 2 <= context_length:
        return [words]
    if len(words) == 1:  # one word longer than the whole context: cut its phonemes, keep the word once
        w, ps = words[0]
        step = context_length - 2
        return [[(w if i == 0 else "", ps[i:i + step])] for i in range(0, len(ps), step)]
    middle = len(words) / 2
    clause_ends = [i + 1 for i, (w, _) in enumerate(words[:-1]) if w[-1:] in ",;:"]
    cut = min(clause_ends, key=lambda i: abs(i - middle)) if clause_ends else len(words) // 2
    return fit_context(words[:cut], context_length) + fit_context(words[cut:], context_length)


def plan_request(spec: G2PSpec, index: int, text: str, voice: str) -> list[PlannedPart]:
    """The model inputs of one request; raises TTSError for text without anything to pronounce."""
    clean = check_text(text)
    g2p = get_g2p(voice)
    parts = []
    for sentence in _SENTENCE_END.split(clean):
        for words in fit_context(phonemize_words(sentence, g2p, spec.vocab), spec.context_length):
            phonemes = " ".join(ps for _, ps in words)
            spoken = " ".join(w for w, _ in words)
            ids = [spec.vocab[p] for p in phonemes if p in spec.vocab]
            parts.append(PlannedPart(request=index, words=words, input_ids=[0, *ids, 0], pack_row=len(phonemes) - 1,
                                     seed=zlib.crc32(f"{Path(voice).stem}\n{spoken}".encode())))  # id or .pt path: same seed
    return parts


def plan_requests(spec: G2PSpec, jobs: Sequence[tuple[int, str, str]]) -> list[PlanOrError]:
    """`plan_request` for each (index, text, voice); a TTSError is returned in place of that request's parts."""
    out: list[PlanOrError] = []
    for index, text, voice in jobs:
        try:
            out.append(plan_request(spec, index, text, voice))
        except TTSError as err:
            out.append(err)
    return out


def _init_worker(spec: G2PSpec) -> None:
    global _spec
    _spec = spec


def _plan_in_worker(jobs: list[tuple[int, str, str]]) -> list[PlanOrError]:
    assert _spec is not None, "G2P worker started without its spec"
    return plan_requests(_spec, jobs)


class PendingPlan:
    """The CPU step of one batch of requests, running (workers) or to run on `result()` (in this process)."""

    def __init__(self, spec: G2PSpec, jobs: list[tuple[int, str, str]], futures: list[Future] | None) -> None:
        self._spec, self.jobs, self._futures = spec, jobs, futures

    def result(self) -> list[PlanOrError]:
        """Plans in job order; an exception other than TTSError (a broken G2P) is raised here."""
        if self._futures is None:
            return plan_requests(self._spec, self.jobs)
        return [plan for future in self._futures for plan in future.result()]

    def cancel(self) -> None:
        for future in self._futures or []:
            future.cancel()


class G2PWorkers:
    """`workers` spawned processes doing the CPU step (0: in the caller's process, when asked for the result)."""

    def __init__(self, spec: G2PSpec, workers: int) -> None:
        self.spec, self.workers = spec, max(0, int(workers))
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, jobs: list[tuple[int, str, str]]) -> PendingPlan:
        """Start planning `jobs` [(request index, text, voice)], split into chunks over the workers."""
        if self.workers == 0 or not jobs:
            return PendingPlan(self.spec, jobs, None)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.spec,))
        size = max(1, min(32, -(-len(jobs) // (4 * self.workers))))  # ~4 chunks per worker, at most 32 requests each
        futures = [self._pool.submit(_plan_in_worker, jobs[i:i + size]) for i in range(0, len(jobs), size)]
        return PendingPlan(self.spec, jobs, futures)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def auto_g2p_workers(device: str, synth_workers: int = 1) -> int:
    """G2P worker processes when the config leaves them to slam: on CUDA min(8, CPU cores / synthesis workers)
    (0 below 2: one worker would only move the work); on the CPU none (the model needs the cores itself)."""
    if device != "cuda":
        return 0
    share = (os.cpu_count() or 1) // max(1, synth_workers)
    return min(8, share) if share >= 2 else 0
