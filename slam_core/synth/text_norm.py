"""Text made speakable: Unicode normalisation, symbol spelling, and sentence-aware splitting.

TTS input comes from web text (TinyStories, SWAG), so it holds curly quotes, dashes, emoji and control
characters. `normalise_text` maps what has a spoken form ("&" -> "and"), keeps Latin letters, digits and the
punctuation that shapes prosody, and drops the rest, counting what it dropped. `split_utterances` cuts a long
text at sentence ends, an over-long sentence at clause marks, and an over-long clause at word boundaries, so
no text is ever truncated to fit a model's limit.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Symbols with a spoken English form; spelled out so the meaning survives G2P.
_SPOKEN_SYMBOLS = {
    "&": " and ", "%": " percent ", "+": " plus ", "=": " equals ", "@": " at ", "#": " number ",
    "°": " degrees ", "€": " euros ", "£": " pounds ", "$": " dollars ", "×": " times ",
}
# Typographic variants NFKC keeps: mapped to the ASCII forms every G2P knows.
_TYPOGRAPHIC = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "`": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2013": ", ", "\u2014": ", ", "\u2015": ", ", "\u2212": "-", "\u2026": "...",
}
_KEEP_PUNCTUATION = set(".,!?;:'\"-()")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


@dataclass(frozen=True)
class Normalised:
    """Speakable text and the number of characters that had to be dropped (no spoken form)."""

    text: str
    dropped_chars: int


def _is_speakable_letter(ch: str) -> bool:
    if ch.isdigit() and ch.isascii():
        return True
    if not ch.isalpha():
        return False
    return ch.isascii() or "LATIN" in unicodedata.name(ch, "")


def normalise_text(text: str) -> Normalised:
    """NFKC, typographic quotes/dashes to ASCII, symbols spelled, control and unknown characters dropped."""
    text = unicodedata.normalize("NFKC", text)
    out: list[str] = []
    dropped = 0
    for ch in text:
        if ch in _TYPOGRAPHIC:
            out.append(_TYPOGRAPHIC[ch])
        elif ch in _SPOKEN_SYMBOLS:
            out.append(_SPOKEN_SYMBOLS[ch])
        elif ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(" ")  # tabs, newlines, zero-width and other control characters separate words
        elif _is_speakable_letter(ch) or ch in _KEEP_PUNCTUATION:
            out.append(ch)
        else:
            dropped += 1
    return Normalised(" ".join("".join(out).split()), dropped)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (split after . ! ? and any closing quote), whitespace-normalised, none empty."""
    return [s for s in (" ".join(p.split()) for p in _SENTENCE_END.split(text)) if s]


def _split_long(piece: str, max_chars: int) -> list[str]:
    """Cut one sentence longer than `max_chars` at clause marks, then at word boundaries (never mid-word
    unless a single word is longer than `max_chars`)."""
    if len(piece) <= max_chars:
        return [piece]
    clauses = [c for c in _CLAUSE_END.split(piece) if c]
    if len(clauses) > 1:
        return _pack([part for c in clauses for part in _split_long(c, max_chars)], max_chars)
    words = piece.split(" ")
    if len(words) > 1:
        return _pack([part for w in words for part in _split_long(w, max_chars)], max_chars)
    return [piece[i:i + max_chars] for i in range(0, len(piece), max_chars)]


def _pack(pieces: list[str], max_chars: int) -> list[str]:
    """Greedily join consecutive pieces with spaces while the result stays within `max_chars`."""
    out: list[str] = []
    for piece in pieces:
        if out and len(out[-1]) + 1 + len(piece) <= max_chars:
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def split_utterances(text: str, max_chars: int) -> list[str]:
    """`text` as utterances of at most `max_chars` characters: whole sentences packed greedily; a sentence
    longer than the limit is cut at clause marks, then word boundaries. Joining the result with spaces
    gives back the whitespace-normalised text (nothing is lost; only a single word longer than the limit
    is cut inside the word)."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    pieces = [part for sentence in split_sentences(text) for part in _split_long(sentence, max_chars)]
    return _pack(pieces, max_chars)
