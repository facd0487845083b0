"""Whisper ASR loading/transcription and the GenPPL + auto-BLEU pipeline on tiny offline stand-ins."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from slam_core.eval.asr import AsrModelNotFoundError, load_asr, transcribe  # noqa: E402
from slam_core.eval.genppl import evaluate_generation, summarize_generation  # noqa: E402
from slam_core.eval.text_metrics import auto_bleu, transcript_nll  # noqa: E402
from slam_core.eval.vocoder import UnitHifiGan, load_vocoder, remove_weight_norm  # noqa: E402

VOCODER_CFG = {
    "num_embeddings": 30, "embedding_dim": 8, "model_in_dim": 8, "upsample_rates": [8, 4, 4, 5],
    "upsample_kernel_sizes": [16, 8, 8, 11], "upsample_initial_channel": 32, "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]], "sampling_rate": 16000,
    "dur_predictor_params": {"encoder_embed_dim": 8, "var_pred_hidden_dim": 8, "var_pred_kernel_size": 3,
                             "var_pred_dropout": 0.5},
}


def _random_whisper(whisper_cls: type, dims: object) -> torch.nn.Module:
    """Whisper(dims) with every weight defined: the decoder's positional embedding is allocated with
    torch.empty (real checkpoints overwrite it), so uninitialised memory would make the test flaky."""
    model = whisper_cls(dims)
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.02)
    return model


@pytest.fixture(scope="module")
def tiny_whisper_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                           n_vocab=51864, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=2)
    path = tmp_path_factory.mktemp("whisper") / "tiny.pt"
    torch.save({"dims": dims.__dict__, "model_state_dict": _random_whisper(Whisper, dims).state_dict()}, path)
    return path


def save_the_whisper(path: Path) -> Path:
    """Save a tiny Whisper whose decoder always predicts the text token ' the' (final LayerNorm output is a
    constant vector that only that token's embedding aligns with), so transcripts are real words, deterministically."""
    import whisper
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(3)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51864, n_text_ctx=448, n_text_state=32, n_text_head=2, n_text_layer=1)
    model = _random_whisper(Whisper, dims)
    the_id = whisper.tokenizer.get_tokenizer(False).encode(" the")[0]
    with torch.no_grad():
        model.decoder.ln.weight.zero_()
        model.decoder.ln.bias.zero_()
        model.decoder.ln.bias[0] = 1.0
        model.decoder.token_embedding.weight[:, 0] = 0.0
        model.decoder.token_embedding.weight[the_id, 0] = 50.0
    torch.save({"dims": dims.__dict__, "model_state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def the_whisper_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_the_whisper(tmp_path_factory.mktemp("whisper_the") / "the.pt")


@pytest.fixture(scope="module")
def tiny_vocoder(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("vocoder")
    model = remove_weight_norm(UnitHifiGan(VOCODER_CFG))
    with torch.no_grad():  # 2 frames per unit: round(exp(ln 3) - 1)
        model.dur_predictor.proj.weight.zero_()
        model.dur_predictor.proj.bias.fill_(math.log(3.0))
    torch.save({"generator": model.state_dict()}, folder / "g.pt")
    (folder / "config.json").write_text(json.dumps(VOCODER_CFG))
    return load_vocoder(folder / "g.pt", folder / "config.json")


def _tiny_ppl_lm(out_dir: Path) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """A word-level tokenizer whose unknown words map to <unk> and a random 1-layer Qwen2 (saved + reloaded)."""
    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "the": 4, "a": 5, ".": 6}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    torch.manual_seed(2)
    cfg = Qwen2Config(vocab_size=len(words), hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    Qwen2ForCausalLM(cfg).save_pretrained(out_dir / "lm")
    fast.save_pretrained(out_dir / "lm")
    lm = Qwen2ForCausalLM.from_pretrained(out_dir / "lm").eval()
    return lm, PreTrainedTokenizerFast.from_pretrained(out_dir / "lm")


def test_load_asr_local_file_and_transcribe_arrays(tiny_whisper_path: Path) -> None:
    model = load_asr(tiny_whisper_path, device="cpu")
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(16000).astype(np.float32), np.zeros(0, dtype=np.float32),
             0.1 * rng.standard_normal(8000)]  # float64 input is converted, not rejected
    texts = transcribe(model, waves, batch_size=2, max_tokens=16)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts) and texts[1] == ""
    # greedy and batch-independent: same audio -> same text
    assert transcribe(model, [waves[2], waves[0]], batch_size=1, max_tokens=16) == [texts[2], texts[0]]
    long_wave = 0.1 * rng.standard_normal(31 * 16000).astype(np.float32)  # > 30 s: sliding-window path
    assert isinstance(transcribe(model, [long_wave], max_tokens=4)[0], str)


def test_transcribe_forces_no_language_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """SlamKit's ASR pipeline forces no language: a multilingual Whisper detects it per utterance, an English-only
    one (no language tokens) transcribes English, and eval.asr_language forces one."""
    import whisper
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    dims = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1, n_text_ctx=448,
                n_text_state=32, n_text_head=2, n_text_layer=1)
    multilingual = _random_whisper(Whisper, ModelDimensions(n_vocab=51865, **dims)).eval()
    english_only = _random_whisper(Whisper, ModelDimensions(n_vocab=51864, **dims)).eval()
    seen = []
    real_decode = whisper.decode
    monkeypatch.setattr(whisper, "decode", lambda m, mel, opts: seen.append(opts.language) or real_decode(m, mel, opts))
    wave = [0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)]
    for model, language in ((multilingual, None), (english_only, None), (multilingual, "fr")):
        assert isinstance(transcribe(model, wave, language=language, max_tokens=2)[0], str)
    assert seen == [None, "en", "fr"]


def test_load_asr_missing_gives_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(AsrModelNotFoundError, match="large-v3-turbo.pt") as err:
        load_asr("large-v3-turbo", allow_download=False)
    assert "local checkpoint file" in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline mode implies no download attempt
    with pytest.raises(AsrModelNotFoundError, match="offline"):
        load_asr("tiny")
    with pytest.raises(AsrModelNotFoundError, match="no such file"):
        load_asr(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AsrModelNotFoundError, match="cannot load"):
        load_asr(tmp_path / "corrupt.pt")


def test_summarize_generation_formula_with_empty_transcript() -> None:
    transcripts = ["the cat the cat", "", "a dog barks"]
    out = summarize_generation(transcripts, [1.0, None, 3.0])
    assert out["genppl"] == pytest.approx(math.exp(2.0))  # exp(mean of per-sample means), empty excluded
    assert (out["n"], out["n_samples"], out["n_empty"]) == (2, 3, 1)
    assert "1 empty transcript" in out["note"]
    assert out["auto_bleu"] == pytest.approx((2 / 3 + 0.0 + 0.0) / 3)  # every transcript, the empty one as 0
    assert "SlamKit" in out["slamkit_difference"]
    assert summarize_generation(["a b a b"], [1.0])["slamkit_difference"] == ""
    none_left = summarize_generation(["", ""], [None, None])
    assert none_left["genppl"] is None and none_left["auto_bleu"] == 0.0 and "undefined" in none_left["note"]
    assert summarize_generation([], [])["auto_bleu"] is None
    with pytest.raises(ValueError, match="NLLs"):
        summarize_generation(["a"], [])


def test_evaluate_generation_end_to_end(tmp_path: Path, the_whisper_path: Path, tiny_vocoder) -> None:
    asr = load_asr(the_whisper_path, device="cpu")
    lm, tokenizer = _tiny_ppl_lm(tmp_path)
    generations = [
        {"pair_id": "p/0", "prompt_units": [1, 5, 9, 2], "generated_units": [7, 3, 3, 8, 12]},
        {"pair_id": "p1", "prompt_units": [4, 4, 11], "generated_units": []},
    ]
    out = evaluate_generation(generations, tiny_vocoder, asr, lm, tokenizer, tmp_path / "gen", asr_max_tokens=16)
    assert out["n_samples"] == 2
    rows = out["rows"]
    for row, gen in zip(rows, generations):
        audio, rate = sf.read(row["wav_path"], dtype="float32")
        n_units = len(gen["prompt_units"]) + len(gen["generated_units"])
        assert rate == 16000 and audio.shape[0] == n_units * 2 * 640  # prompt kept: 2 frames x 640 samples
        assert row["pair_id"] == gen["pair_id"] and "transcript" in row
    assert Path(rows[0]["wav_path"]).name == "gen_0000_p_0.wav"
    # the pipeline's numbers are the library's formula applied to its own transcripts
    expected_nll = transcript_nll(lm, tokenizer, [r["transcript"] for r in rows])
    assert [r["nll"] for r in rows] == pytest.approx(expected_nll)
    assert [r["transcript"] for r in rows] == [" " + " ".join(["the"] * 16)] * 2  # as Whisper gives it
    assert (out["n"], out["n_empty"]) == (2, 0) and all(v is not None for v in expected_nll)
    assert out["genppl"] == pytest.approx(math.exp(np.mean(expected_nll)))
    assert out["auto_bleu"] == pytest.approx(1.0)  # "the the" repeats at every position
    from slam_core.eval.report import write_report

    page = write_report(tmp_path / "r.html", "t", None, [{"metric": "genppl", "value": out["genppl"]}], rows, {})
    assert page.read_text().count("<audio controls preload=none src=\"audio/gen_") == 2
    assert "transcript: the the the" in page.read_text()
    saved = json.loads((tmp_path / "gen" / "genppl.json").read_text())
    assert saved["genppl"] == out["genppl"] and len(saved["rows"]) == 2
    again = evaluate_generation(generations, tiny_vocoder, asr, lm, tokenizer, tmp_path / "gen2", asr_max_tokens=16)
    assert [r["transcript"] for r in again["rows"]] == [r["transcript"] for r in rows]  # deterministic


def test_judge_generations_vocodes_prompt_and_continuation_apart(tmp_path: Path, the_whisper_path: Path,
                                                                 tiny_vocoder) -> None:
    from slam_core.eval.judge import judge_generations

    prompts_seen: list[str] = []

    def judge(prompt: str) -> str:  # records what the judge LM would be asked
        prompts_seen.append(prompt)
        return "\\boxed{3}" if len(prompts_seen) == 1 else "no score"

    generations = [{"pair_id": "a", "prompt_units": [1, 2, 3], "generated_units": [4, 5]},
                   {"pair_id": "b", "prompt_units": [6], "generated_units": [7, 8, 9, 10]}]
    out = judge_generations(generations, tiny_vocoder, load_asr(the_whisper_path), judge, tmp_path, asr_max_tokens=4)
    assert (out["n"], out["n_parsed"], out["n_unparsable"], out["mean_score"]) == (2, 1, 1, 3.0)
    for row, gen in zip(out["rows"], generations):
        assert sf.info(row["prompt_wav_path"]).frames == len(gen["prompt_units"]) * 2 * 640
        assert sf.info(row["wav_path"]).frames == len(gen["generated_units"]) * 2 * 640
        assert row["pair_id"] == gen["pair_id"] and row["continuation_text"] == " the the the the"
    assert f'the text continuation is :"{out["rows"][0]["continuation_text"]}"' in prompts_seen[0]
