"""Check a model directory before any work uses it: present, a causal LM, complete weights, the right vocabulary.

One reading of the small files only (config.json, the safetensors headers): a truncated or random weights file,
a directory of another kind of model (an encoder, a classifier) or a checkpoint trained with another unit
vocabulary is refused with one `InputError` naming the file and what to do, instead of a deep traceback from
`from_pretrained` minutes into a run.
"""

from __future__ import annotations

import json
from pathlib import Path

from slam_core.errors import InputError


def is_causal_lm_config(config: dict) -> bool:
    """Whether a config.json describes a model `AutoModelForCausalLM` can build."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = config.get("architectures") or []
    if architectures:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    return config.get("model_type") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def read_model_config(path: Path, what: str) -> dict:
    """config.json of a save_pretrained directory, as a dict; InputError when missing or not JSON."""
    if not path.exists():
        raise InputError(f"{what} not found", path,
                         "pass an existing save_pretrained directory (check the path, or train/init one first)")
    if not path.is_dir():
        raise InputError(f"{what} is a file, not a directory", path,
                         "pass the save_pretrained directory that holds config.json and the weights")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InputError(f"{what} has no config.json", path, "pass a save_pretrained directory (config.json + weights)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{what} config.json is not valid JSON ({err})", config_file,
                         "restore the file from the original model") from None
    if not isinstance(config, dict):
        raise InputError(f"{what} config.json is not a JSON object", config_file, "restore the file")
    return config


def check_weights_complete(path: Path, what: str) -> None:
    """Every *.safetensors file's header is readable and its tensors cover the file (truncation shows here)."""
    from safetensors import SafetensorError, safe_open

    weights = sorted(path.glob("*.safetensors"))
    if not weights and not list(path.glob("*.bin")):
        raise InputError(f"{what} has no weights (*.safetensors)", path,
                         "pass a directory written by save_pretrained (or `slam model init`)")
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as err:
            raise InputError(f"{what} weights are truncated or not safetensors ({err})", file,
                             "copy the checkpoint again or point at another one") from None


def check_causal_lm_dir(path: str | Path, what: str = "model", vocab_size: int | None = None) -> dict:
    """Refuse a directory that cannot serve as a speech/text causal LM here; returns its config.json.

    `vocab_size`: the speech vocabulary the run uses (units.n_units + 2); a checkpoint trained with another one
    would index units it never learnt or miss some.
    """
    path = Path(path).expanduser()
    config = read_model_config(path, what)
    if not is_causal_lm_config(config):
        kind = ", ".join(config.get("architectures") or []) or config.get("model_type") or "unknown"
        raise InputError(f"{what} is not a causal (next-token) language model ({kind})", path / "config.json",
                         "pass a decoder-only LM such as Qwen/Qwen2.5-0.5B, or 'tiny-qwen2' offline")
    if vocab_size is not None and config.get("vocab_size") != vocab_size:
        raise InputError(
            f"{what} has vocabulary {config.get('vocab_size')}, this run uses {vocab_size} "
            f"(units.n_units={vocab_size - 2} + 2 special tokens)", path / "config.json",
            f"evaluate it with --set units.n_units={int(config.get('vocab_size') or 2) - 2} and the centroids "
            f"it was trained on, or pick a checkpoint of this run")
    check_weights_complete(path, what)
    return config
