"""TWIST init of the speech LM: parameter count of the real geometry, row slicing for several families."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import (AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM,
                          OPTConfig, OPTForCausalLM, Qwen2Config)

from slam_core.config import ModelConfig
from slam_core.lm.model import (BaseModelUnavailable, build_tiny_text_lm, count_parameters, init_speech_lm,
                                resolve_base, speech_lm_config)

TINY = ModelConfig(base="tiny-qwen2", context_len=256, tiny_hidden_size=64, tiny_layers=2)


def test_qwen25_05b_geometry_gives_358m_params_on_meta():
    real = Qwen2Config(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                       max_position_embeddings=32_768, rope_theta=1_000_000.0, attention_dropout=0.0)
    cfg = speech_lm_config(real, ModelConfig(), n_units=500)
    assert cfg.vocab_size == 502 and (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 1)
    assert cfg.rope_parameters["rope_theta"] == 10_000.0 and cfg.use_cache is False
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    assert count_parameters(model) == 358_347_904
    assert real.vocab_size == 151_936  # the base config is not mutated


def test_tiny_qwen2_twist_init_saves_plain_hf_dir(tmp_path):
    base = resolve_base(TINY, tmp_path)
    assert Path(base) == tmp_path / "models" / "tiny-qwen2-text"
    out = init_speech_lm(TINY, base, tmp_path / "init", seed=0)
    text_lm = AutoModelForCausalLM.from_pretrained(base)
    speech_lm = AutoModelForCausalLM.from_pretrained(out["path"])
    assert text_lm.config.vocab_size == 1024
    assert torch.equal(speech_lm.get_input_embeddings().weight, text_lm.get_input_embeddings().weight[:502])
    assert speech_lm.get_output_embeddings().weight.data_ptr() == speech_lm.get_input_embeddings().weight.data_ptr()
    layer = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(speech_lm.state_dict()[layer], text_lm.state_dict()[layer])
    assert out["n_params"] == count_parameters(speech_lm) < count_parameters(text_lm)
    assert speech_lm.config.use_cache is False and speech_lm.config.rope_parameters["rope_theta"] == 10_000.0
    # a plain transformers process (no slam import) loads it
    code = ("import sys; from transformers import AutoModelForCausalLM as A; m = A.from_pretrained(sys.argv[1]); "
            "assert m.config.vocab_size == 502 and not any(k.startswith('slam') for k in sys.modules); print('ok')")
    res = subprocess.run([sys.executable, "-c", code, out["path"]], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def _tiny_base(kind: str):
    common = dict(vocab_size=1000, hidden_size=32, num_attention_heads=4, max_position_embeddings=512)
    if kind == "opt":
        return OPTForCausalLM(OPTConfig(**common, ffn_dim=64, num_hidden_layers=2, word_embed_proj_dim=32,
                                        dropout=0.1, attention_dropout=0.1))
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common, intermediate_size=64, num_hidden_layers=2,
                                            tie_word_embeddings=False, attention_dropout=0.1))
    return GPTNeoXForCausalLM(GPTNeoXConfig(**common, intermediate_size=64, num_hidden_layers=2,
                                            tie_word_embeddings=False, hidden_dropout=0.1, attention_dropout=0.1))


@pytest.mark.parametrize("kind", ["opt", "llama", "gpt_neox"])
def test_twist_other_families_keep_first_rows(tmp_path, kind):
    torch.manual_seed(0)
    base_model = _tiny_base(kind)
    base_model.save_pretrained(tmp_path / "base")
    cfg = ModelConfig(base=str(tmp_path / "base"), context_len=256, rope_theta=None)
    out = init_speech_lm(cfg, str(tmp_path / "base"), tmp_path / "init")
    model = AutoModelForCausalLM.from_pretrained(out["path"])
    assert model.config.vocab_size == 502
    assert torch.equal(model.get_input_embeddings().weight, base_model.get_input_embeddings().weight[:502])
    assert torch.equal(model.get_output_embeddings().weight, base_model.get_output_embeddings().weight[:502])
    dropouts = {k: v for k, v in model.config.to_dict().items() if "dropout" in k and isinstance(v, float)}
    assert dropouts and all(v == 0.0 for v in dropouts.values())
    ids = torch.tensor([[1, 5, 9, 300, 501, 1]])
    assert model(ids).logits.shape == (1, 6, 502)


def _table7_base(family: str) -> torch.nn.Module:
    """A tiny text LM of each Table 7 family, with the family's own position scheme and tying (positions for
    the default 1024-token context)."""
    common = dict(vocab_size=600, hidden_size=32, num_attention_heads=4, max_position_embeddings=2048)
    if family == "OPT":
        return OPTForCausalLM(OPTConfig(**common, ffn_dim=64, num_hidden_layers=2, word_embed_proj_dim=32))
    if family == "Pythia":
        return GPTNeoXForCausalLM(GPTNeoXConfig(**common, intermediate_size=64, num_hidden_layers=2,
                                                rotary_pct=0.25, tie_word_embeddings=False))
    if family == "Qwen2.5":
        return AutoModelForCausalLM.from_config(Qwen2Config(**common, intermediate_size=64, num_hidden_layers=2,
                                                            num_key_value_heads=2, rope_theta=1_000_000.0,
                                                            tie_word_embeddings=True))
    # SmolLM2 is a Llama; MobileLLM's hub code is a Llama too (deep and thin, grouped-query attention,
    # shared embeddings), so its stand-in is a deep, thin, tied Llama
    layers, kv_heads = (2, 4) if family == "SmolLM2" else (6, 1)
    return LlamaForCausalLM(LlamaConfig(**common, intermediate_size=64, num_hidden_layers=layers,
                                        num_key_value_heads=kv_heads, rope_theta=100_000.0, tie_word_embeddings=True))


@pytest.mark.parametrize("family", ["OPT", "Pythia", "SmolLM2", "MobileLLM", "Qwen2.5"])
def test_slam_model_init_with_default_settings_for_every_table7_family(tmp_path, family, capsys):
    from flows.cli import main

    torch.manual_seed(0)
    _table7_base(family).save_pretrained(tmp_path / "base")
    assert main(["model", "init", "--base", str(tmp_path / "base"), "--out", str(tmp_path / "init"),
                 "--data-root", str(tmp_path / "root")]) == 0
    printed = capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "init")
    assert model.config.vocab_size == 502 and model(torch.tensor([[1, 5, 501, 1]])).logits.shape == (1, 4, 502)
    if family == "OPT":  # learned positions: the default θ override is skipped, and the user is told
        assert "note: model.rope_theta=10000 skipped: opt has no rotary position embeddings" in printed
        assert getattr(model.config, "rope_parameters", None) is None
    else:  # the paper's θ = 10,000 replaces the base's
        assert "note:" not in printed and model.config.rope_parameters["rope_theta"] == 10_000.0


def test_random_init_is_seeded_and_not_twist(tmp_path):
    base = resolve_base(TINY, tmp_path)
    cfg = TINY.model_copy(update={"twist_init": False})
    a = AutoModelForCausalLM.from_pretrained(init_speech_lm(cfg, base, tmp_path / "a", seed=3)["path"])
    b = AutoModelForCausalLM.from_pretrained(init_speech_lm(cfg, base, tmp_path / "b", seed=3)["path"])
    text_lm = AutoModelForCausalLM.from_pretrained(base)
    emb = a.get_input_embeddings().weight
    assert torch.equal(emb, b.get_input_embeddings().weight)
    assert not torch.allclose(emb, text_lm.get_input_embeddings().weight[:502])


def test_missing_hub_model_gives_one_clear_error(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(BaseModelUnavailable) as err:
        init_speech_lm(ModelConfig(), "Qwen/Qwen2.5-0.5B", tmp_path / "x")
    msg = str(err.value)
    assert "Qwen/Qwen2.5-0.5B" in msg and "local directory" in msg
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "x").exists()


def test_resolve_base_rebuilds_tiny_when_sizes_change(tmp_path):
    resolve_base(TINY, tmp_path)
    bigger = TINY.model_copy(update={"tiny_hidden_size": 96})
    path = resolve_base(bigger, tmp_path)
    assert AutoModelForCausalLM.from_pretrained(path).config.hidden_size == 96
    assert resolve_base(ModelConfig(base="org/some-model"), tmp_path) == "org/some-model"


def test_tiny_text_lm_is_deterministic(tmp_path):
    a = build_tiny_text_lm(tmp_path / "a", TINY, seed=1)
    b = build_tiny_text_lm(tmp_path / "b", TINY, seed=1)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
