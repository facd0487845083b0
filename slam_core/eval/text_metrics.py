"""Text metrics on ASR transcripts of generated speech: auto-BLEU and GenPPL, as SlamKit computes them.

auto-BLEU is SlamKit's `calc_auto_bleu` (`slamkit/utils/calculation_utils.py`): tokens from
`nltk.tokenize.NLTKWordTokenizer().tokenize(text)` (NLTK itself, pinned in pyproject.toml), bigrams, and the
fraction of bigram positions whose bigram occurs at another position; a text without bigrams scores 0, and the
corpus score is the mean over every transcript, empty ones included as 0 (`asr_perplexity` in
`slamkit/metric/generative_metric.py`). GenPPL is exp(mean over transcripts of the per-transcript mean NLL),
whitespace-only transcripts scored like any other. One difference is kept: an empty transcript has no token to
score, which SlamKit turns into a 0/0 NaN that makes the whole GenPPL NaN; here it is excluded, counted in
`n_empty` and named in the result row (`slamkit_difference`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slam_core.eval.pairs import score_sequences

log = logging.getLogger(__name__)

GENPPL_EMPTY_DIFFERENCE = ("empty transcripts are excluded from GenPPL and counted in n_empty; SlamKit scores "
                           "them as 0/0, which makes its GenPPL NaN")


@functools.lru_cache(maxsize=1)
def _nltk_tokenizer() -> Any:
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def word_tokens(text: str) -> list[str]:
    """NLTK's word tokens of a text (`NLTKWordTokenizer().tokenize`, as SlamKit's auto-BLEU uses them)."""
    return _nltk_tokenizer().tokenize(text)


def auto_bleu(text: str, n: int = 2) -> float:
    """Fraction of n-gram positions whose n-gram also occurs at another position of the same text; 0 if none."""
    tokens = word_tokens(text)
    ngrams = [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not ngrams:
        return 0.0
    counts = Counter(ngrams)
    return sum(1 for g in ngrams if counts[g] > 1) / len(ngrams)


def mean_auto_bleu(texts: Sequence[str], n: int = 2) -> float | None:
    """Mean auto-BLEU over every transcript, an empty one counting 0 (SlamKit's corpus score); None for none."""
    return float(np.mean([auto_bleu(t, n) for t in texts])) if texts else None


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
    prepend_bos: bool = False,
) -> list[float | None]:
    """Per-sample mean NLL of each text under a causal LM, over every token after the first (None for an empty
    text, or one the tokenizer turns into fewer than two tokens; a whitespace-only text is scored, as in SlamKit).

    The text is tokenised as the tokenizer does by default (`add_special_tokens=True`) and scored from its second
    token, as SlamKit's `calc_nll` does whatever the tokenizer: with Llama-3.2-1B (which adds BOS) every word is a
    target. `prepend_bos` (eval.genppl_bos=prepend) puts the tokenizer's `bos_token_id` first when it adds none,
    so that the first word is a target too: other numbers than SlamKit's for such a tokenizer.
    """
    device = device or str(next(lm.parameters()).device)
    seqs: list[np.ndarray] = []
    keep: list[int] = []
    for i, text in enumerate(texts):
        if not text:
            continue
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        bos = getattr(tokenizer, "bos_token_id", None)
        if prepend_bos and bos is not None and (not ids or ids[0] != bos):
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
        log.info("transcript_nll: %d of %d transcripts empty (no token to score)", len(texts) - len(keep), len(texts))
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
