"""Speech-text interleaving (SIMS; SlamKit's `InterleavingTokeniser`): one vocabulary holding the base LM's text
tokens, the speech units and two modality markers, and sequences that switch modality at word boundaries.

Vocabulary (`InterleavedVocab`): text ids 0 .. n_text-1 exactly as the base tokenizer gives them (n_text =
len(tokenizer), as SlamKit's added tokens start there), unit k -> n_text + k, then `<speech>`, `<text>`.
BOS = the tokenizer's BOS, else its EOS (Qwen2.5: `<|endoftext|>`), and EOS = its EOS, so a sequence is
`[BOS, marker, ..., marker, ..., EOS]`; every modality run starts with its marker, the first one included.
PAD = the tokenizer's pad token, else EOS (SlamKit forces 0, a real text token: its weak point 8).

Which words are spoken (`speech_mask`, seeded per item by (seed, key), so a shard's sequences are the same bytes
on every run; SlamKit's are unseeded):
- poisson (SlamKit's default; `interleave_span` 10, `interleave_prob` 0.3): spans of Poisson(span) words start at
  random eligible words until ceil(prob x words) are speech; a span that would overlap a chosen one is redrawn
  (after 100 x words draws it is cut short at the chosen one instead, so the loop always ends);
- span: a word starts speech with probability `prob` and speech lasts `span` words from there;
- random: each word is speech with probability 0.5 (SlamKit ignores `interleave_prob` here too).

A speech run covers the units whose frame-end time (cumulative durations x `frame_s`, 0.04 s at 25 Hz) lies in
[first word start, last word end] of the run, as SlamKit's bisect. Words without a time (not aligned) cannot
bound a speech run: at a run's edges they move to text; a run with no units left becomes text.
Text runs are the words joined by spaces, with a leading space unless the run opens the utterance, so a word
mid-sentence is tokenised as in running text.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SPEECH_MARKER = "<speech>"
TEXT_MARKER = "<text>"
METHODS = ("poisson", "span", "random")
FRAME_S = 0.04  # 25 Hz units: 640 samples at 16 kHz
WordTimes = tuple[str, "float | None", "float | None"]


@dataclass(frozen=True)
class InterleavedVocab:
    """Where each kind of token lives in the joint vocabulary."""

    n_text: int
    n_units: int
    bos_id: int
    eos_id: int
    pad_id: int

    @property
    def unit_offset(self) -> int:
        return self.n_text

    @property
    def speech_id(self) -> int:
        return self.n_text + self.n_units

    @property
    def text_id(self) -> int:
        return self.speech_id + 1

    @property
    def size(self) -> int:
        return self.text_id + 1

    @classmethod
    def of(cls, tokenizer: Any, n_units: int = 500) -> "InterleavedVocab":
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("interleaving needs a text tokenizer with an EOS token (the sequence end)")
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        return cls(n_text=len(tokenizer), n_units=n_units, bos_id=bos, eos_id=eos, pad_id=pad)

    def to_json(self) -> dict[str, int]:
        return {"n_text": self.n_text, "n_units": self.n_units, "bos_id": self.bos_id, "eos_id": self.eos_id,
                "pad_id": self.pad_id, "unit_offset": self.unit_offset, "speech_id": self.speech_id,
                "text_id": self.text_id, "vocab_size": self.size}


@dataclass(frozen=True)
class Span:
    """One modality run: words [word_lo, word_hi) and, for speech, units [unit_lo, unit_hi)."""

    modality: str  # "text" or "speech"
    word_lo: int
    word_hi: int
    unit_lo: int = 0
    unit_hi: int = 0


def item_rng(seed: int, key: str) -> np.random.Generator:
    """The generator of one item: a function of (seed, key) only, not of shard layout or order."""
    digest = hashlib.sha256(f"interleave-{seed}-{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def poisson_spans(n: int, span: float, prob: float, rng: np.random.Generator) -> np.ndarray:
    """SlamKit's `select_spans_poisson`, seeded: a bool mask with about ceil(prob x n) words in Poisson spans."""
    mask = np.zeros(n, dtype=bool)
    target = math.ceil(n * prob)
    eligible = list(range(n))  # sorted, so a draw depends on the generator only
    selected, attempts = 0, 0
    while selected < target and eligible:
        start = int(eligible[rng.integers(len(eligible))])
        end = min(start + int(rng.poisson(span)), n)
        attempts += 1
        if mask[start:end].any():
            if attempts < 100 * n:
                continue
            end = start + int(np.argmax(mask[start:end]))  # bounded: cut at the chosen span instead
        mask[start:end] = True
        selected += end - start
        gone = set(range(start, end)) | ({end} if end < n else set()) | {start}
        eligible = [i for i in eligible if i not in gone]
    return mask


def speech_mask(n: int, method: str, span: float, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Which of `n` words are spoken (True) under `method`."""
    if method == "poisson":
        return poisson_spans(n, span, prob, rng)
    if method == "random":
        return rng.random(n) < 0.5
    if method == "span":
        mask = np.zeros(n, dtype=bool)
        patience = 0
        for i, start in enumerate(rng.random(n) < prob):
            patience = int(span) if start else patience
            mask[i] = patience > 0
            patience -= 1
        return mask
    raise ValueError(f"interleave method {method!r}: expected one of {', '.join(METHODS)}")


def _runs(mask: Sequence[bool]) -> list[tuple[bool, int, int]]:
    out: list[tuple[bool, int, int]] = []
    for i, m in enumerate(mask):
        if out and out[-1][0] == bool(m):
            out[-1] = (out[-1][0], out[-1][1], i + 1)
        else:
            out.append((bool(m), i, i + 1))
    return out


def plan_spans(words: Sequence[WordTimes], durations: Sequence[int] | np.ndarray, mask: Sequence[bool],
               frame_s: float = FRAME_S) -> list[Span]:
    """Modality runs of an utterance for a speech mask over its words (see the module doc for the rules)."""
    mask = np.array(mask, dtype=bool)
    timed = np.array([a is not None and b is not None for _, a, b in words], dtype=bool)
    for speech, lo, hi in _runs(mask):  # untimed words cannot bound a speech run: they move to text
        if speech:
            idx = [i for i in range(lo, hi) if timed[i]]
            mask[lo:hi] = False
            if idx:
                mask[idx[0]:idx[-1] + 1] = True
    ends = np.cumsum(np.asarray(durations, dtype=np.float64)) * frame_s
    unit_ranges: dict[int, tuple[int, int]] = {}
    for speech, lo, hi in _runs(mask):
        if not speech:
            continue
        start = min(words[i][1] for i in range(lo, hi) if timed[i])
        end = max(words[i][2] for i in range(lo, hi) if timed[i])
        u_lo, u_hi = int(np.searchsorted(ends, start, "left")), int(np.searchsorted(ends, end, "right"))
        if u_hi > u_lo:
            unit_ranges[lo] = (u_lo, u_hi)
        else:
            mask[lo:hi] = False  # shorter than a unit: said in text
    return [Span("speech", lo, hi, *unit_ranges[lo]) if speech else Span("text", lo, hi)
            for speech, lo, hi in _runs(mask)]


class InterleavingTokenizer:
    """Interleaved, text-only and speech-only token sequences in the joint vocabulary, and their decoding."""

    def __init__(self, text_tokenizer: Any, n_units: int = 500, method: str = "poisson", span: float = 10,
                 prob: float = 0.3, seed: int = 0, frame_s: float = FRAME_S) -> None:
        if method not in METHODS:
            raise ValueError(f"interleave method {method!r}: expected one of {', '.join(METHODS)}")
        self.text_tokenizer = text_tokenizer
        self.vocab = InterleavedVocab.of(text_tokenizer, n_units)
        self.method, self.span, self.prob, self.seed, self.frame_s = method, span, prob, seed, frame_s

    # ---- building blocks
    def text_ids(self, text: str) -> list[int]:
        return list(self.text_tokenizer.encode(text, add_special_tokens=False)) if text else []

    def unit_ids(self, units: Sequence[int] | np.ndarray) -> list[int]:
        units = np.asarray(units, dtype=np.int64)
        if units.size and (units.min() < 0 or units.max() >= self.vocab.n_units):
            raise ValueError(f"unit ids must lie in [0, {self.vocab.n_units}); got {units.min()}..{units.max()}")
        return (units + self.vocab.unit_offset).tolist()

    def _wrap(self, body: list[int], bos: bool, eos: bool) -> np.ndarray:
        return np.array(([self.vocab.bos_id] if bos else []) + body + ([self.vocab.eos_id] if eos else []), np.int64)

    # ---- sequences
    def speech_mask(self, n_words: int, key: str) -> np.ndarray:
        return speech_mask(n_words, self.method, self.span, self.prob, item_rng(self.seed, key))

    def plan(self, words: Sequence[WordTimes], durations: Sequence[int], key: str) -> list[Span]:
        return plan_spans(words, durations, self.speech_mask(len(words), key), self.frame_s)

    def encode_spans(self, spans: Sequence[Span], words: Sequence[WordTimes], units: Sequence[int],
                     bos: bool = True, eos: bool = True) -> np.ndarray:
        body: list[int] = []
        for s in spans:
            if s.modality == "speech":
                body += [self.vocab.speech_id] + self.unit_ids(np.asarray(units)[s.unit_lo:s.unit_hi])
            else:
                text = " ".join(w for w, _, _ in words[s.word_lo:s.word_hi])
                body += [self.vocab.text_id] + self.text_ids(text if s.word_lo == 0 else " " + text)
        return self._wrap(body, bos, eos)

    def encode_interleaved(self, words: Sequence[WordTimes], units: Sequence[int], durations: Sequence[int],
                           key: str) -> np.ndarray:
        """`[BOS, <text> ..., <speech> u..., ..., EOS]` of one aligned utterance (units deduplicated, durations
        their run lengths in frames); `key` (the segment id) seeds the choice of spans."""
        if len(units) != len(durations):
            raise ValueError(f"{key}: {len(units)} units but {len(durations)} durations")
        return self.encode_spans(self.plan(words, durations, key), words, units)

    def encode_text(self, text: str, bos: bool = True, eos: bool = True) -> np.ndarray:
        return self._wrap([self.vocab.text_id] + self.text_ids(text), bos, eos)

    def encode_speech(self, units: Sequence[int], bos: bool = True, eos: bool = True) -> np.ndarray:
        return self._wrap([self.vocab.speech_id] + self.unit_ids(units), bos, eos)

    def decode(self, ids: Sequence[int] | np.ndarray) -> list[tuple[str, Any]]:
        """Modality runs of a sequence: ("text", [words]) and ("speech", unit array); BOS/EOS/PAD dropped (as text
        tokens they end a text run). Ids before the first marker count as text."""
        v = self.vocab
        out: list[tuple[str, Any]] = []
        modality, run = "text", []

        def flush() -> None:
            if modality == "speech":
                out.append(("speech", np.asarray(run, dtype=np.int64) - v.unit_offset))
            elif run:
                out.append(("text", self.text_tokenizer.decode(run).split()))

        for t in np.asarray(ids, dtype=np.int64).tolist():
            if t in (v.speech_id, v.text_id):
                flush()
                modality, run = ("speech" if t == v.speech_id else "text"), []
            elif t in (v.bos_id, v.eos_id, v.pad_id):
                continue
            elif modality == "speech" and not v.unit_offset <= t < v.speech_id:
                raise ValueError(f"text token {t} inside a speech run")
            elif modality == "text" and v.unit_offset <= t < v.speech_id:
                raise ValueError(f"unit token {t} inside a text run")
            else:
                run.append(t)
        flush()
        return out
