"""The base LM's own text tokenizer, for the interleaved speech-text vocabulary (`interleave.py`).

A real base (Qwen/Qwen2.5-0.5B, a local save_pretrained dir) brings its tokenizer files; the offline stand-in
('tiny-qwen2', a random 1,024-row Qwen2) has none, so a byte-level BPE of at most that many tokens is trained on
the run's own text and saved once, as the tiny LM itself is. Byte-level: every text encodes, nothing maps to an
unknown token, and decoding gives the text back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from slam_core.atomic import atomic_dir

log = logging.getLogger(__name__)

END_OF_TEXT = "<|endoftext|>"  # Qwen2's document separator, also the tiny tokenizer's only special token


class TextTokenizerUnavailable(RuntimeError):
    """The base LM's tokenizer is neither a local directory nor loadable from the Hugging Face Hub (cache)."""


def build_tiny_tokenizer(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 1024) -> Path:
    """Train a byte-level BPE of `vocab_size` tokens (the special token included) on `texts`; save it as an HF
    tokenizer directory (`AutoTokenizer.from_pretrained(out_dir)` loads it). Same texts, same tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        fast.save_pretrained(tmp)
    log.info("built tiny text tokenizer (%d tokens) at %s", len(fast), out_dir)
    return out_dir


def tiny_tokenizer_dir(root: str | Path, texts: list[str], vocab_size: int = 1024) -> Path:
    """The tiny tokenizer for these texts under `root` (built once; named by a digest of texts and size)."""
    digest = hashlib.sha256(json.dumps([vocab_size, texts]).encode()).hexdigest()[:12]
    out = Path(root) / f"tiny-text-tokenizer-{digest}"
    if not (out / "tokenizer.json").is_file():
        build_tiny_tokenizer(out, texts, vocab_size)
    return out


def load_text_tokenizer(name_or_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a base LM (hub id or local directory), with one clear error when it cannot be had."""
    source = str(name_or_dir)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise TextTokenizerUnavailable(
            f"cannot load the text tokenizer of '{source}' ({type(err).__name__}): download the base LM "
            f"(`huggingface-cli download {source}`, needs network) or pass a local directory holding its "
            f"tokenizer files; the offline 'tiny-qwen2' stand-in gets one from tiny_tokenizer_dir()") from None
