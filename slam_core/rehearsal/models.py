"""Random-weight stand-ins of every model the paper preset loads, saved in the layouts the real loaders read.

Size "real" has the real shapes: HuBERT-base at 25 Hz (12 layers, 768 wide; layer 11 quantised), the
Qwen2.5-0.5B text LM (151,936-token vocabulary, cut to 502 rows by TWIST init), Kokoro-82M, a unit HiFi-GAN with
the 640x upsampling of 25 Hz units, Whisper large-v3-turbo and Llama-3.2-1B (GenPPL). Size "tiny" keeps every
code path with small widths, for CPU runs. Nothing here is downloaded; each builder is seeded, so a rebuild
gives the same weights on the same device.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slam_core.atomic import atomic_dir, atomic_path
from slam_core.units.encoder import CONV_KERNEL_25HZ, CONV_STRIDE_25HZ

log = logging.getLogger(__name__)

KOKORO_VOICES = ("af_heart", "am_fenrir", "bf_emma", "bm_george")  # the SpokenSwag voices (slam_core.synth.jobs)
# Kokoro-82M's config.json (hexgrad/Kokoro-82M v1.0) without its phoneme vocabulary, which is built from the
# corpus text here (random weights give every symbol the same meaning anyway).
KOKORO_82M = {
    "n_token": 178, "hidden_dim": 512, "style_dim": 128, "n_layer": 3, "max_dur": 50, "n_mels": 80, "dim_in": 64,
    "max_conv_dim": 512, "text_encoder_kernel_size": 5, "dropout": 0.2,
    "plbert": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 2048,
               "max_position_embeddings": 512, "num_hidden_layers": 12, "dropout": 0.1},
    "istftnet": {"upsample_rates": [10, 6], "upsample_kernel_sizes": [20, 12], "upsample_initial_channel": 512,
                 "resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5]] * 3,
                 "gen_istft_n_fft": 20, "gen_istft_hop_size": 5},
}
# The smallest Kokoro that runs: hidden_dim, style_dim and the decoder widths are fixed by the code.
KOKORO_TINY = {**KOKORO_82M, "n_layer": 1,
               "plbert": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                          "max_position_embeddings": 512, "num_hidden_layers": 1, "dropout": 0.1},
               "istftnet": {**KOKORO_82M["istftnet"], "resblock_kernel_sizes": [3],
                            "resblock_dilation_sizes": [[1, 3, 5]]}}


@dataclass(frozen=True)
class Shapes:
    """Config arguments of each stand-in at one size."""

    hubert: dict[str, Any]
    text_lm: dict[str, Any]
    kokoro: dict[str, Any]
    vocoder: dict[str, Any]
    whisper: dict[str, Any]
    ppl_lm: dict[str, Any]
    encoder_layer: int = 11
    n_units: int = 500
    notes: dict[str, str] = field(default_factory=dict)


def _vocoder(channels: int, embedding_dim: int, kernels: list[int], resblocks: list[int]) -> dict[str, Any]:
    """textlesslib CodeHiFiGAN config keys; upsampling 5*4*4*4*2 = 640 samples per 25 Hz unit at 16 kHz."""
    return {"num_embeddings": 500, "embedding_dim": embedding_dim, "model_in_dim": embedding_dim,
            "upsample_rates": [5, 4, 4, 4, 2], "upsample_kernel_sizes": [11, 8, 8, 8, 4],
            "upsample_initial_channel": channels, "resblock_kernel_sizes": resblocks,
            "resblock_dilation_sizes": [[1, 3, 5]] * len(resblocks), "sampling_rate": 16000,
            "dur_predictor_params": {"encoder_embed_dim": embedding_dim, "var_pred_hidden_dim": embedding_dim,
                                     "var_pred_kernel_size": kernels[0], "var_pred_dropout": 0.5}}


SIZES: dict[str, Shapes] = {
    "real": Shapes(
        hubert={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                "conv_dim": (512,) * 8},
        text_lm={"vocab_size": 151_936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                 "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32_768,
                 "rope_theta": 1_000_000.0, "tie_word_embeddings": True},
        kokoro=KOKORO_82M,
        vocoder=_vocoder(512, 128, [3], [3, 7, 11]),
        whisper={"n_mels": 128, "n_audio_ctx": 1500, "n_audio_state": 1280, "n_audio_head": 20, "n_audio_layer": 32,
                 "n_vocab": 51_866, "n_text_ctx": 448, "n_text_state": 1280, "n_text_head": 20, "n_text_layer": 4},
        ppl_lm={"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                "num_key_value_heads": 8, "max_position_embeddings": 131_072, "rope_theta": 500_000.0,
                "tie_word_embeddings": True, "vocab_size": 128_256},
        notes={"vocoder": "HiFi-GAN V1 widths with 640x upsampling; the published config's exact values are not "
                          "checked"}),
    "tiny": Shapes(
        hubert={"hidden_size": 64, "num_hidden_layers": 12, "num_attention_heads": 4, "intermediate_size": 128,
                "conv_dim": (32,) * 8},
        text_lm={"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                 "rope_theta": 1_000_000.0, "tie_word_embeddings": True},
        kokoro=KOKORO_TINY,
        vocoder=_vocoder(32, 8, [3], [3]),
        whisper={"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 32, "n_audio_head": 2, "n_audio_layer": 1,
                 "n_vocab": 51_864, "n_text_ctx": 448, "n_text_state": 32, "n_text_head": 2, "n_text_layer": 1},
        ppl_lm={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                "num_key_value_heads": 1, "max_position_embeddings": 2048, "rope_theta": 500_000.0,
                "tie_word_embeddings": True, "vocab_size": 4096}),
}


def shapes_for(size: str) -> Shapes:
    try:
        return SIZES[size]
    except KeyError:
        raise ValueError(f"rehearsal size '{size}': expected one of {', '.join(SIZES)}") from None


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_hubert(out_dir: Path, shapes: Shapes, seed: int, device: str = "cpu") -> dict[str, Any]:
    """A HubertModel with HuBERT-base's layout at 25 Hz (eight conv layers, 640 samples per frame)."""
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(**shapes.hubert, conv_stride=CONV_STRIDE_25HZ, conv_kernel=CONV_KERNEL_25HZ,
                          architectures=["HubertModel"])
    torch.manual_seed(seed)
    with torch.device(device):
        model = HubertModel(config).eval()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
    return {"path": str(out_dir), "parameters": _n_params(model)}


def build_text_lm(out_dir: Path, shapes: Shapes, seed: int, device: str = "cpu") -> dict[str, Any]:
    """A Qwen2 text LM (Qwen2.5-0.5B's config at size real) saved in bf16, as the release is."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(Qwen2Config(**shapes.text_lm, architectures=["Qwen2ForCausalLM"]))
    n_params = _n_params(model)
    with atomic_dir(out_dir) as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp)
    return {"path": str(out_dir), "parameters": n_params}


def kokoro_vocab(texts: Iterable[str]) -> dict[str, int]:
    """Phoneme -> id over every symbol misaki's espeak G2P gives for `texts` in both accents (the voices are
    American and British), plus punctuation."""
    from misaki.espeak import EspeakG2P

    symbols = set(" .,!?;:'\"-")
    g2ps = [EspeakG2P(language="en-us"), EspeakG2P(language="en-gb")]
    for text in texts:
        for g2p in g2ps:
            symbols |= set(g2p(text)[0])
    return {s: i + 1 for i, s in enumerate(sorted(symbols))}


def build_kokoro(out_dir: Path, shapes: Shapes, texts: Iterable[str], seed: int) -> dict[str, Any]:
    """config.json, kokoro-v1_0.pth (the random weights themselves, so every worker process loads the same
    model) and voices/<id>.pt style tensors (510, 1, 256), as hexgrad/Kokoro-82M lays them out."""
    from slam_core.synth.kokoro_tts import KOKORO_WEIGHTS_FILE, import_kmodel

    config = {**shapes.kokoro, "vocab": kokoro_vocab(texts)}
    if max(config["vocab"].values()) >= config["n_token"]:
        raise ValueError(f"Kokoro stand-in: {len(config['vocab'])} phoneme symbols exceed n_token {config['n_token']}")
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        torch.save({}, tmp / "empty.pth")  # KModel loads no tensor from it: the weights stay random
        torch.manual_seed(seed)
        model = import_kmodel()(repo_id="hexgrad/Kokoro-82M", config=str(tmp / "config.json"),
                                model=str(tmp / "empty.pth"))
        (tmp / "empty.pth").unlink()
        parts = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")
        torch.save({k: getattr(model, k).state_dict() for k in parts}, tmp / KOKORO_WEIGHTS_FILE)
        (tmp / "voices").mkdir()
        for k, voice in enumerate(KOKORO_VOICES):
            style = 0.1 * torch.randn(510, 1, 256, generator=torch.Generator().manual_seed(seed + k))
            torch.save(style, tmp / "voices" / f"{voice}.pt")
    return {"path": str(out_dir), "parameters": _n_params(model), "voices": list(KOKORO_VOICES)}


def build_vocoder(out_dir: Path, shapes: Shapes, seed: int) -> dict[str, Any]:
    """The textlesslib file pair (checkpoint with a "generator" state dict + its config JSON) under the
    published file names, so `eval.vocoder=<dir>` resolves it like a downloaded copy."""
    from slam_core.eval.vocoder import CHECKPOINT_FILE, CONFIG_FILE, UnitHifiGan, remove_weight_norm

    torch.manual_seed(seed)
    model = remove_weight_norm(UnitHifiGan(shapes.vocoder))
    with torch.no_grad():  # about 2 frames per unit (round(exp(ln 3) - 1)), like real speech at 25 Hz
        model.dur_predictor.proj.weight.zero_()
        model.dur_predictor.proj.bias.fill_(math.log(3.0))
    with atomic_dir(out_dir) as tmp:
        torch.save({"generator": model.state_dict()}, tmp / CHECKPOINT_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(shapes.vocoder, indent=1))
    return {"path": str(out_dir), "parameters": _n_params(model)}


def build_whisper(out_path: Path, shapes: Shapes, seed: int) -> dict[str, Any]:
    """An openai-whisper checkpoint file ({"dims", "model_state_dict"}) whose decoder always predicts ' the':
    its final norm outputs a constant that only that token's embedding aligns with. Random weights otherwise
    emit end-of-text at once or loop; a fixed word gives non-empty transcripts, so GenPPL is computed."""
    import whisper
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(**shapes.whisper)
    torch.manual_seed(seed)
    model = Whisper(dims)
    the_id = whisper.tokenizer.get_tokenizer(dims.n_vocab >= 51_865, num_languages=dims.n_vocab - 51_765
                                             - int(dims.n_vocab >= 51_865)).encode(" the")[0]
    with torch.no_grad():
        torch.nn.init.normal_(model.decoder.positional_embedding, std=0.02)  # allocated with torch.empty
        model.decoder.ln.weight.zero_()
        model.decoder.ln.bias.zero_()
        model.decoder.ln.bias[0] = 1.0
        model.decoder.token_embedding.weight[:, 0] = 0.0
        model.decoder.token_embedding.weight[the_id, 0] = 50.0
    with atomic_path(out_path, suffix=".pt") as tmp:
        torch.save({"dims": dims.__dict__, "model_state_dict": model.half().state_dict()}, tmp)
    return {"path": str(out_path), "parameters": _n_params(model)}


def build_ppl_lm(out_dir: Path, shapes: Shapes, words: Iterable[str], seed: int,
                 device: str = "cpu") -> dict[str, Any]:
    """A Llama text LM (Llama-3.2-1B's config at size real) with a word-level tokenizer over `words`, saved
    together as `eval.ppl_lm` expects (config, weights, tokenizer files in one directory)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for w in sorted({w.lower() for w in words}):
        vocab.setdefault(w, len(vocab))
    if len(vocab) > shapes.ppl_lm["vocab_size"]:
        raise ValueError(f"ppl LM stand-in: {len(vocab)} words exceed its vocabulary of {shapes.ppl_lm['vocab_size']}")
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**shapes.ppl_lm, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                             architectures=["LlamaForCausalLM"]))
    n_params = _n_params(model)
    with atomic_dir(out_dir) as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp)
        fast.save_pretrained(tmp)
    return {"path": str(out_dir), "parameters": n_params, "tokenizer_words": len(vocab)}


def centroids_from_features(encoder_dir: Path, layer: int, n_units: int, waves: list[np.ndarray], out_path: Path,
                            seed: int, device: str = "cpu") -> dict[str, Any]:
    """K-means stand-in: `n_units` distinct frames of the encoder's layer features on real speech (seeded
    choice), saved as plain .npy centroids like `slam units convert-kmeans` writes. Random Gaussian centroids
    would sit far from every feature and a few would take all frames; frames of the same encoder spread the
    units the way fitted centroids do."""
    import hashlib

    from slam_core.units.encoder import load_encoder
    from slam_core.units.extract import UnitExtractor

    extractor = UnitExtractor(load_encoder(str(encoder_dir), device), None, layer, device)
    feats = np.concatenate(extractor.features(waves))
    if len(feats) < n_units:
        raise ValueError(f"centroids: {len(feats)} frames of speech, need at least {n_units}")
    rng = np.random.default_rng(seed)
    centroids = np.ascontiguousarray(feats[rng.choice(len(feats), n_units, replace=False)], np.float32)
    with atomic_path(out_path, suffix=".npy") as tmp:
        np.save(tmp, centroids)
    digest = hashlib.sha256(Path(out_path).read_bytes()).hexdigest()
    return {"path": str(out_path), "shape": list(centroids.shape), "sha256": digest, "frames_available": len(feats)}
