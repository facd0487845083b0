"""TWIST initialisation for an interleaved speech-text LM: the text vocabulary is kept, unit and marker rows added.

The speech-only TWIST (`model.py`) keeps the first 502 rows of the base's embedding for PAD/BOS/units, dropping
the text vocabulary. Interleaving needs the text tokens too, so here the joint vocabulary of
`interleave.InterleavedVocab` is laid out as SlamKit's `add_tokens` + `resize_token_embeddings` does: the base's
first n_text = len(tokenizer) rows keep their trained embedding (and output-head) weights, and the 500 unit rows
and the `<speech>`/`<text>` rows that follow start at the mean of the text rows plus seeded N(0, initializer_range)
noise (HF's mean resizing in spirit: new rows start where text embeddings live, so the first logits are sane).
Qwen2.5's embedding has 151,936 rows for 151,665 tokenizer ids: the 271 unused rows beyond the tokenizer are
dropped and the units take ids 151,665 .. 152,164, so the model has 152,167 rows (SlamKit's count).

Everything else (dropout off, RoPE theta, context, no KV cache) is `model.speech_lm_config`'s. The saved
directory holds the model, the base tokenizer's files and `interleave.json` (the vocabulary layout), so one
directory describes both.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PretrainedConfig, PreTrainedModel

from slam_core.atomic import atomic_dir
from slam_core.config import ModelConfig
from slam_core.lm.interleave import InterleavedVocab
from slam_core.lm.model import count_parameters, load_base_config, speech_lm_config
from slam_core.lm.model_check import check_weights_complete

log = logging.getLogger(__name__)

VOCAB_FILE = "interleave.json"


def interleaved_lm_config(base_config: PretrainedConfig, cfg: ModelConfig, vocab: InterleavedVocab) -> PretrainedConfig:
    """The base config for the joint vocabulary: `speech_lm_config`'s settings, the tokenizer's special ids."""
    config = speech_lm_config(base_config, cfg, vocab.n_units)
    config.vocab_size = vocab.size
    config.pad_token_id, config.bos_token_id, config.eos_token_id = vocab.pad_id, vocab.bos_id, vocab.eos_id
    return config


def _grown(src: torch.Tensor, shape: torch.Size, n_text: int, std: float, gen: torch.Generator) -> torch.Tensor:
    """`src`'s first n_text rows, then rows at their mean plus N(0, std) noise up to `shape`."""
    text = src[:n_text].detach().float()
    new = shape[0] - n_text
    noise = torch.randn((new, *shape[1:]), generator=gen) * std if std > 0 else torch.zeros((new, *shape[1:]))
    return torch.cat([text, text.mean(0, keepdim=True).expand(new, *shape[1:]) + noise])


def interleaved_state_dict(base_model: PreTrainedModel, target: PreTrainedModel, vocab: InterleavedVocab,
                           seed: int = 0) -> dict[str, torch.Tensor]:
    """Base weights for `target`: vocabulary-sized tensors keep their text rows and grow unit + marker rows."""
    base_state = base_model.state_dict()
    std = float(getattr(target.config, "initializer_range", 0.02) or 0.0)
    gen = torch.Generator().manual_seed(seed)
    out, grown = {}, {}
    for name, param in target.state_dict().items():
        src = base_state.get(name)
        if src is None:
            raise KeyError(f"interleaved TWIST init: base has no tensor '{name}'")
        if src.shape != param.shape:
            if src.shape[1:] != param.shape[1:] or param.shape[0] != vocab.size or src.shape[0] < vocab.n_text:
                raise ValueError(f"interleaved TWIST init: cannot map '{name}' {tuple(src.shape)} -> "
                                 f"{tuple(param.shape)} (text vocabulary {vocab.n_text})")
            key = src.data_ptr()  # a tied head shares the embedding's tensor: grow it once, identically
            if key not in grown:
                grown[key] = _grown(src, param.shape, vocab.n_text, std, gen)
            src = grown[key]
        out[name] = src.detach().clone().to(param.dtype)
    return out


def build_interleaved_lm(cfg: ModelConfig, base: str, vocab: InterleavedVocab, seed: int = 0) -> PreTrainedModel:
    """In-memory interleaved LM: TWIST from `base` keeping its text rows (cfg.twist_init), else random init."""
    config = interleaved_lm_config(load_base_config(base), cfg, vocab)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if cfg.twist_init:
        if Path(base).is_dir():
            check_weights_complete(Path(base), "base LM")
        base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model.load_state_dict(interleaved_state_dict(base_model, model, vocab, seed), strict=True)
        model.tie_weights()
        del base_model
    model.generation_config = GenerationConfig(pad_token_id=vocab.pad_id, bos_token_id=vocab.bos_id,
                                               eos_token_id=vocab.eos_id)
    return model


def init_interleaved_lm(cfg: ModelConfig, base: str, text_tokenizer: Any, out_dir: str | Path, n_units: int = 500,
                        seed: int = 0) -> dict[str, Any]:
    """Build the interleaved LM and save model + tokenizer + `interleave.json` in one HF directory.

    Returns {"path", "n_params", "vocab"}."""
    vocab = InterleavedVocab.of(text_tokenizer, n_units)
    model = build_interleaved_lm(cfg, base, vocab, seed)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        text_tokenizer.save_pretrained(tmp)
        (Path(tmp) / VOCAB_FILE).write_text(json.dumps(vocab.to_json(), indent=1) + "\n")
    n_params = count_parameters(model)
    log.info("interleaved LM from %s (twist=%s, %d text + %d units + 2 markers): %d params -> %s", base,
             cfg.twist_init, vocab.n_text, vocab.n_units, n_params, out_dir)
    return {"path": str(out_dir), "n_params": n_params, "vocab": vocab.to_json()}


def read_vocab(model_dir: str | Path) -> InterleavedVocab:
    """The vocabulary layout saved beside an interleaved model."""
    path = Path(model_dir) / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no {VOCAB_FILE}; not an interleaved model (init_interleaved_lm)")
    raw = json.loads(path.read_text())
    vocab = InterleavedVocab(raw["n_text"], raw["n_units"], raw["bos_id"], raw["eos_id"], raw["pad_id"])
    if vocab.size != raw["vocab_size"]:
        raise ValueError(f"{path}: vocab_size {raw['vocab_size']} does not match its layout ({vocab.size})")
    return vocab
