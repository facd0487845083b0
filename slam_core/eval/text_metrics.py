"""Text metrics on ASR transcripts of generated speech: auto-BLEU and GenPPL (docs/published-artifacts.md).

auto-BLEU follows SlamKit's `calc_auto_bleu`, which tokenises with `nltk.NLTKWordTokenizer().tokenize(text)`.
nltk is not a dependency here, so `word_tokens` re-implements the Treebank rules that matter for plain English
transcripts (see its docstring); GenPPL is exp(mean over samples of the per-sample mean NLL).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slam_core.eval.pairs import score_sequences

log = logging.getLogger(__name__)

# Treebank substitutions, in NLTKWordTokenizer order; applied to plain text, then split on whitespace.
_TREEBANK_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r'^"'), " `` "),
    (re.compile(r'(``)'), r" \1 "),
    (re.compile(r'([ (\[{<])("|\'{2})'), r"\1 `` "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.\.\."), " ... "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    # only the text-final period is split off: NLTKWordTokenizer runs without sentence splitting
    (re.compile(r'([^\.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[\]\[\(\)\{\}<>]"), r" \g<0> "),
    (re.compile(r"--"), " -- "),
]
_ENDING_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r'"'), " '' "),
    (re.compile(r"([^' ])('[sSmMdD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]


def word_tokens(text: str) -> list[str]:
    """NLTK-style word tokens of plain text (a regex port of NLTKWordTokenizer's main rules).

    Splits punctuation (, ; : ? ! brackets quotes), clitics ('s 'm 'd 'll 're 've n't) and the final period;
    keeps hyphenated words, decimal numbers and "1,000" whole. Not ported: the special-case splits of
    "cannot"/"gonna"-style words, which do not change auto-BLEU on ASR transcripts in practice.
    """
    out = text
    for pattern, repl in _TREEBANK_RULES:
        out = pattern.sub(repl, out)
    out = f" {out} "
    for pattern, repl in _ENDING_RULES:
        out = pattern.sub(repl, out)
    return out.split()


def auto_bleu(text: str, n: int = 2) -> float:
    """Fraction of n-gram positions whose n-gram also occurs at another position of the same text; 0 if none."""
    tokens = word_tokens(text)
    ngrams = [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not ngrams:
        return 0.0
    counts = Counter(ngrams)
    return sum(1 for g in ngrams if counts[g] > 1) / len(ngrams)


def mean_auto_bleu(texts: Sequence[str], n: int = 2) -> float:
    """Mean auto-BLEU over samples (SlamKit's corpus score); 0 for no samples."""
    return float(np.mean([auto_bleu(t, n) for t in texts])) if texts else 0.0


def genppl(per_sample_mean_nll: Sequence[float | None]) -> dict[str, Any]:
    """GenPPL = exp(mean over samples of per-sample mean NLL); never NaN.

    Samples given as None (empty transcript) or non-finite are excluded and counted; with none left the
    value is None and `note` says why.
    """
    values = [v for v in per_sample_mean_nll if v is not None and math.isfinite(v)]
    n_empty = sum(1 for v in per_sample_mean_nll if v is None)
    n_nonfinite = len(per_sample_mean_nll) - len(values) - n_empty
    notes = []
    if n_empty:
        notes.append(f"{n_empty} empty transcript(s) excluded")
    if n_nonfinite:
        notes.append(f"{n_nonfinite} non-finite NLL(s) excluded")
    value = math.exp(float(np.mean(values))) if values else None
    if value is None:
        notes.append("no scorable transcript: GenPPL undefined")
    return {"genppl": value, "n": len(values), "n_empty": n_empty, "n_nonfinite": n_nonfinite, "note": "; ".join(notes)}


def transcript_nll(
    lm: torch.nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 8, device: str | None = None,
) -> list[float | None]:
    """Per-sample mean NLL of each text under a causal LM, over the tokens after BOS (None for empty text).

    BOS comes from the tokenizer's special tokens (Llama adds it); if the tokenizer adds none, its
    `bos_token_id` is prepended so the first word is a target too.
    """
    device = device or str(next(lm.parameters()).device)
    seqs: list[np.ndarray] = []
    keep: list[int] = []
    for i, text in enumerate(texts):
        if not text or not text.strip():
            continue
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        if len(ids) < 2:
            continue
        seqs.append(np.asarray(ids, dtype=np.int64))
        keep.append(i)
    out: list[float | None] = [None] * len(texts)
    if seqs:
        mean_logprob = score_sequences(lm, seqs, batch_size, device)
        for i, lp in zip(keep, mean_logprob):
            out[i] = float(-lp)
    if len(keep) < len(texts):
        log.info("transcript_nll: %d of %d transcripts empty", len(texts) - len(keep), len(texts))
    return out


PPL_LM_HUB_ID = "meta-llama/Llama-3.2-1B"
GENERIC_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def load_ppl_lm(
    name_or_dir: str = PPL_LM_HUB_ID, device: str = "auto", tokenizer_dir: str | None = None,
) -> tuple[torch.nn.Module, Any]:
    """The GenPPL judge LM and its tokenizer (hub id or local save_pretrained dir); pad = eos as in SlamKit.

    `tokenizer_dir` defaults to `name_or_dir`; give it when the tokenizer lives elsewhere (AutoTokenizer picks
    the tokenizer class from the model's config.json when both share a directory).
    """
    from transformers import AutoTokenizer

    from slam_core.device import pick_device
    from slam_core.eval.pairs import CheckpointNotFoundError, load_causal_lm

    model = load_causal_lm(name_or_dir, pick_device(device), what=f"GenPPL LM (default {PPL_LM_HUB_ID})")
    source = str(tokenizer_dir or name_or_dir)
    loader: Any = AutoTokenizer
    tok_cfg = Path(source).expanduser() / "tokenizer_config.json"
    # A plain tokenizer.json dir: AutoTokenizer would pick the class from the model's config.json instead
    if tok_cfg.is_file() and json.loads(tok_cfg.read_text()).get("tokenizer_class") in GENERIC_TOKENIZER_CLASSES:
        from transformers import PreTrainedTokenizerFast as loader
    try:
        tokenizer = loader.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise CheckpointNotFoundError(
            f"GenPPL tokenizer: cannot load '{tokenizer_dir or name_or_dir}' ({type(err).__name__}); pass a local dir with tokenizer "
            f"files, or make '{PPL_LM_HUB_ID}' available in the HF cache."
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
