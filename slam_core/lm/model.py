"""Speech-LM construction: a tiny local text LM stand-in, base resolution, and TWIST initialisation.

TWIST (Hassid et al.) starts the speech LM from a text LM: keep the transformer, keep the first
`n_units + 2` rows of the token embedding (and of the output head; tied if the base ties), and use
those rows for the speech vocabulary (PAD 0, BOS = EOS 1, unit k -> k + 2). The result is a plain HF
`save_pretrained` directory that `AutoModelForCausalLM.from_pretrained(dir)` loads with no slam import.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PretrainedConfig, PreTrainedModel

from slam_core.atomic import atomic_dir
from slam_core.errors import CheckpointNotFoundError
from slam_core.lm.model_check import check_weights_complete, is_causal_lm_config
from slam_core.config import ModelConfig
from slam_core.errors import InputError
from slam_core.lm.vocab import BOS_ID, EOS_ID, PAD_ID, vocab_size

log = logging.getLogger(__name__)

TINY_BASE_NAME = "tiny-qwen2"
TINY_TEXT_VOCAB = 1024  # > 502 so the TWIST row slice is a real cut, as with Qwen's 151,936 rows
# Models with learned absolute position tables cannot grow their context by a config change.
_LEARNED_POSITION_TYPES = {"opt", "gpt2", "gpt_neo", "gptj", "bloom", "biogpt"}


class BaseModelUnavailable(RuntimeError):
    """The base text LM is neither a local directory nor loadable from the Hugging Face Hub (cache)."""


def build_tiny_text_lm(out_dir: Path, cfg: ModelConfig, seed: int = 0) -> Path:
    """Build and save a tiny random Qwen2 text LM (the offline stand-in for Qwen/Qwen2.5-0.5B)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    n_heads = max(1, cfg.tiny_hidden_size // 32)  # head_dim ~32, dividing the hidden size exactly
    while cfg.tiny_hidden_size % n_heads:
        n_heads -= 1
    n_kv_heads = n_heads // 2 if n_heads % 2 == 0 else n_heads  # grouped-query attention like Qwen2.5
    config = Qwen2Config(
        vocab_size=TINY_TEXT_VOCAB, hidden_size=cfg.tiny_hidden_size, intermediate_size=cfg.tiny_hidden_size * 4,
        num_hidden_layers=cfg.tiny_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
        max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1_000_000.0, use_cache=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
    log.info("built tiny text LM (%d params) at %s", model.num_parameters(), out_dir)
    return out_dir


def resolve_base(cfg: ModelConfig, data_root: Path) -> str:
    """Map cfg.base to something `from_pretrained` accepts; 'tiny-qwen2' is built once under the data root."""
    if cfg.base != TINY_BASE_NAME:
        return cfg.base
    tiny_dir = Path(data_root) / "models" / "tiny-qwen2-text"
    if not _tiny_matches(tiny_dir, cfg):  # absent, or built with other tiny_* sizes: (re)build
        build_tiny_text_lm(tiny_dir, cfg)
    return str(tiny_dir)


def _tiny_matches(tiny_dir: Path, cfg: ModelConfig) -> bool:
    config_path = tiny_dir / "config.json"
    if not config_path.exists():
        return False
    saved = json.loads(config_path.read_text())
    return (saved.get("hidden_size"), saved.get("num_hidden_layers")) == (cfg.tiny_hidden_size, cfg.tiny_layers)


def _unavailable(base: str, err: Exception) -> BaseModelUnavailable:
    return BaseModelUnavailable(
        f"cannot load base text LM '{base}': it is not a local directory and the Hugging Face Hub copy is not "
        f"available ({type(err).__name__}). Either download it (`huggingface-cli download {base}`, needs network) "
        f"or set model.base to a local directory holding its config.json and weights "
        f"(or 'tiny-qwen2' for the offline stand-in)."
    )


def load_base_config(base: str) -> PretrainedConfig:
    """AutoConfig of the base LM, with one clear error when it cannot be had."""
    if Path(base).is_dir() and not (Path(base) / "config.json").exists():
        raise BaseModelUnavailable(f"base LM directory '{base}' has no config.json (expected a save_pretrained dir)")
    try:
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as err:
        raise _unavailable(base, err) from None
    if not is_causal_lm_config(config.to_dict()):
        kind = ", ".join(config.architectures or []) or config.model_type
        raise BaseModelUnavailable(f"base LM is not a causal (next-token) language model ({kind}) — model.base={base} "
                                   f"— pass a decoder-only LM such as Qwen/Qwen2.5-0.5B, or 'tiny-qwen2' offline")
    return config


def speech_lm_config(base_config: PretrainedConfig, cfg: ModelConfig, n_units: int = 500) -> PretrainedConfig:
    """The base config with the speech vocabulary swapped in, dropout off, RoPE/context adjusted, no KV cache."""
    config = copy.deepcopy(base_config)
    config.vocab_size = vocab_size(n_units)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = PAD_ID, BOS_ID, EOS_ID
    config.use_cache = False  # a KV cache silently disables packed-sequence masking (docs/offline-standins.md)
    for key, value in config.to_dict().items():
        if ("dropout" in key or "layerdrop" in key or key.endswith("_pdrop")) and isinstance(value, float):
            setattr(config, key, 0.0)
    note = rope_override_note(config, cfg.rope_theta)
    if cfg.rope_theta is not None and not note:
        _set_rope_theta(config, cfg.rope_theta)
    elif note:
        log.info(note)
    _ensure_context(config, cfg.context_len)
    return config


def has_rope(config: PretrainedConfig) -> bool:
    """Whether the architecture uses rotary position embeddings (Qwen2.5, SmolLM2/Llama, Pythia/GPT-NeoX; OPT
    has a learned position table instead)."""
    rope = getattr(config, "rope_parameters", None)
    return (isinstance(rope, dict) and "rope_theta" in rope) or hasattr(config, "rope_theta")


def rope_override_note(config: PretrainedConfig, rope_theta: float | None) -> str:
    """Why model.rope_theta is not applied to this base ("" when it is applied or not set): the override is
    the paper's θ = 10,000 for RoPE models (Section 4.1) and means nothing without RoPE."""
    if rope_theta is None or has_rope(config):
        return ""
    return (f"model.rope_theta={rope_theta:g} skipped: {config.model_type} has no rotary position embeddings "
            "(learned positions), so there is no θ to override")


def _set_rope_theta(config: PretrainedConfig, theta: float) -> None:
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        config.rope_parameters = {**rope, "rope_theta": float(theta)}
    else:
        config.rope_theta = float(theta)


def _ensure_context(config: PretrainedConfig, context_len: int) -> None:
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos is None or max_pos >= context_len:
        return
    if config.model_type in _LEARNED_POSITION_TYPES:
        raise InputError(
            f"model.context_len={context_len} exceeds the learned position table ({max_pos}) of {config.model_type}",
            "model.context_len", f"set model.context_len={max_pos} or less")
    config.max_position_embeddings = context_len


def _twist_state_dict(base_model: PreTrainedModel, target: PreTrainedModel, n_vocab: int) -> dict[str, torch.Tensor]:
    """Base weights reshaped for `target`: vocabulary-sized tensors keep their first n_vocab rows."""
    base_state = base_model.state_dict()
    out = {}
    for name, param in target.state_dict().items():
        src = base_state.get(name)
        if src is None:
            raise KeyError(f"TWIST init: base has no tensor '{name}'")
        if src.shape != param.shape:
            if src.shape[1:] != param.shape[1:] or param.shape[0] != n_vocab or src.shape[0] < n_vocab:
                raise ValueError(f"TWIST init: cannot map '{name}' {tuple(src.shape)} -> {tuple(param.shape)}")
            src = src[:n_vocab]
        out[name] = src.detach().clone().to(param.dtype)
    return out


def build_speech_lm(cfg: ModelConfig, base: str, n_units: int = 500, seed: int = 0) -> PreTrainedModel:
    """In-memory speech LM: TWIST from `base` (hub id or local dir), or random init from its config."""
    config = speech_lm_config(load_base_config(base), cfg, n_units)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if cfg.twist_init:
        if Path(base).is_dir():  # truncated or random weights: one line naming the file, not a loader traceback
            check_weights_complete(Path(base), "base LM")
        try:
            base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        except OSError as err:
            raise _unavailable(base, err) from None
        model.load_state_dict(_twist_state_dict(base_model, model, config.vocab_size), strict=True)
        model.tie_weights()
        del base_model
    model.generation_config = GenerationConfig(pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    return model


def init_speech_lm(cfg: ModelConfig, base: str, out_dir: Path, n_units: int = 500, seed: int = 0) -> dict:
    """Build the speech LM from `base` and save it as a plain HF directory. Returns {"path", "n_params", "notes"}
    (notes: settings that did not apply to this base, e.g. a RoPE override on a model without RoPE)."""
    model = build_speech_lm(cfg, base, n_units, seed)
    note = rope_override_note(load_base_config(base), cfg.rope_theta)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
    n_params = count_parameters(model)
    log.info("speech LM from %s (twist=%s): %d params -> %s", base, cfg.twist_init, n_params, out_dir)
    return {"path": str(out_dir), "n_params": n_params, "notes": [note] if note else []}


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (a tied head counts once)."""
    return sum(p.numel() for p in model.parameters())


def load_lm(name_or_dir: str | Path, attn_implementation: str = "sdpa", what: str = "speech LM checkpoint") -> PreTrainedModel:
    """The one loader of causal LMs (speech LM checkpoints, and the text LMs of GenPPL and the judge): a
    save_pretrained directory or a hub id, always float32 weights (training keeps fp32 master weights under
    autocast; scoring and sampling cast the model themselves). A missing artifact raises one
    `CheckpointNotFoundError` naming the path or hub id and the local-directory option."""
    from slam_core.lm.attention import is_packed, register_packed_attention

    if is_packed(attn_implementation):
        register_packed_attention()
    source = str(name_or_dir)
    local = Path(source).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise CheckpointNotFoundError(f"{what}: {local} has no config.json (expected a save_pretrained directory)")
    try:
        return AutoModelForCausalLM.from_pretrained(str(local) if local.exists() else source,
                                                    attn_implementation=attn_implementation, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise CheckpointNotFoundError(
            f"{what}: cannot load '{source}' ({type(err).__name__}). Pass a local save_pretrained directory, "
            f"or make the hub id '{source}' available (online, or in the HF cache with HF_HUB_OFFLINE=1)."
        ) from None


def load_speech_lm(path: Path, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """Load a saved speech LM (fp32 master weights) for training or scoring, without a KV cache."""
    model = load_lm(path, attn_implementation)
    model.config.use_cache = False
    return model
