"""GPTScore (the LLM judge) as SlamKit's llm_as_judge: Lin et al.'s instruction, SlamKit's answer parsing, an
OpenAI-compatible endpoint served on 127.0.0.1, a tiny local LM judge, the 6 s minimum file length and the prompt
transcribed from its own audio."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402

from chat_stub import chat_endpoint  # noqa: E402
from slam_core.eval import judge as judge_module  # noqa: E402
from slam_core.eval.judge import (  # noqa: E402
    JUDGE_INSTRUCTION, EndpointJudge, JudgeRequestError, build_judge_prompt, judge_generations, judge_transcripts,
    load_local_judge, parse_score,
)

# continuation transcript -> canned endpoint reply (None: HTTP 500)
CANNED = {"good": "The continuation fits well. The final answer is $\\boxed{4}$", "ok": "\\boxed{ 2 }",
          "bare": "Score: 5", "vague": "somewhere between 2 and 3", "boxed_bad": "\\boxed{7}", "broken": None}
# sha256 of slp-rl/slamkit@388b402 config/metric/llm_as_judge.yaml `instruction`, as YAML loads it
SLAMKIT_INSTRUCTION_SHA256 = "4005003e48ef6782c7917160ed0fc717fa299aa06e89c2673a9010356fefc3a3"


def test_instruction_is_slamkits_and_filled_as_slamkit_fills_it() -> None:
    assert hashlib.sha256(JUDGE_INSTRUCTION.encode()).hexdigest() == SLAMKIT_INSTRUCTION_SHA256
    assert JUDGE_INSTRUCTION.startswith("The task is evaluating the relevance and likelihood")
    prompt = build_judge_prompt(" Once upon a time", " there was a cat.")  # Whisper's text, not stripped
    assert 'The text prompt is: " Once upon a time", and the text continuation is :" there was a cat."' in prompt
    assert "[prompt_audio_transcription]" not in prompt and "$\\boxed{x}$" in prompt


def test_parse_score_is_slamkits_regex() -> None:
    # the first \boxed{<digits>}, any integer (SlamKit keeps 0 or 7 too); nothing else is read
    assert parse_score("\\boxed{3}") == 3 and parse_score("first \\boxed{1}, final \\boxed{5}") == 1
    assert parse_score("The final answer is $\\boxed{4}$.") == 4 and parse_score("\\boxed{10}") == 10
    assert parse_score("\\boxed{0}") == 0 and parse_score("\\boxed{x} then \\boxed{2}") == 2
    assert parse_score("\\boxed{3.5}") is None and parse_score("\\boxed{ 2 }") is None
    assert parse_score("I'd say 4.") is None and parse_score("4") is None and parse_score("Score: 5") is None
    assert parse_score("") is None and parse_score(None) is None and parse_score("no idea") is None


def _canned_reply(body: dict) -> str | None:
    return CANNED[body["messages"][0]["content"].split('the text continuation is :"')[1].split('"')[0]]


@pytest.fixture()
def chat_server() -> Iterator[tuple[str, list[dict]]]:
    with chat_endpoint(_canned_reply) as served:
        yield served


def test_endpoint_judge_counts_unparsable_and_failed(chat_server: tuple[str, list[dict]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    chat_url, seen = chat_server
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test")
    judge = EndpointJudge(chat_url + "/v1/", "judge-model", api_key_env="TEST_JUDGE_KEY", timeout_s=10)
    items = [("once upon a time", name) for name in CANNED]
    out = judge_transcripts(items, judge)
    assert [r["score"] for r in out["rows"]] == [4, None, None, None, 7, None]
    assert out["mean_score"] == pytest.approx((4 + 7) / 2)  # mean of the parsed answers, 7 kept as SlamKit
    assert (out["n"], out["n_parsed"], out["n_unparsable"], out["n_failed"], out["n_out_of_range"]) == (6, 2, 3, 1, 1)
    assert "HTTP 500" in out["rows"][-1]["error"] and out["rows"][3]["answer"] == CANNED["vague"]
    request = seen[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    # as SlamKit's OpenAIJudge: the model and one user message, the service's own sampling defaults
    assert set(request["body"]) == {"model", "messages"} and request["body"]["model"] == "judge-model"
    assert request["body"]["messages"] == [{"role": "user",
                                            "content": build_judge_prompt("once upon a time", "good")}]


def test_endpoint_judge_needs_explicit_config(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="explicit"):
        EndpointJudge("", "m")
    monkeypatch.delenv("NOT_SET_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="NOT_SET_JUDGE_KEY"):
        EndpointJudge("http://127.0.0.1:9", "m", api_key_env="NOT_SET_JUDGE_KEY")
    assert EndpointJudge("https://judge.example", "m").url == "https://judge.example/v1/chat/completions"
    closed = EndpointJudge("http://127.0.0.1:9", "m", timeout_s=2)  # discard port: connection refused
    with pytest.raises(JudgeRequestError, match="127.0.0.1:9"):
        closed("hello")
    assert judge_transcripts([("a", "b")], closed)["n_failed"] == 1


def _constant_word_lm(out_dir: Path, word: str) -> Path:
    """A tiny GPT-2 that always emits `word`: the final LayerNorm outputs a constant vector that only the
    embedding row of `word` aligns with (tied head), so every next-token distribution peaks there."""
    vocab = {"<unk>": 0, "<eos>": 1, "the": 2, "cat": 3, "\\boxed{4}": 4, "boxed": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=256, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=1, eos_token_id=1))
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[vocab[word], 0] = 40.0
    path = out_dir / word
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_local_lm_judge(tmp_path: Path) -> None:
    items = [("the cat sat", "the cat ran away"), ("a dog", "barked")]
    judge = load_local_judge(_constant_word_lm(tmp_path, "\\boxed{4}"), device="cpu", max_new_tokens=3)
    assert (judge.max_new_tokens, judge.temperature) == (3, 0.8)
    assert (load_local_judge(_constant_word_lm(tmp_path, "cat"), device="cpu").max_new_tokens) == 512  # SlamKit's
    out = judge_transcripts(items, judge)
    assert [r["answer"] for r in out["rows"]] == ["\\boxed{4} \\boxed{4} \\boxed{4}"] * 2
    assert out["mean_score"] == 4.0 and (out["n_parsed"], out["n_unparsable"]) == (2, 0)
    assert judge_transcripts(items, judge)["rows"] == out["rows"]  # re-seeded: same answers

    garbage = load_local_judge(_constant_word_lm(tmp_path, "cat"), device="cpu", max_new_tokens=3)
    out = judge_transcripts(items, garbage)
    assert out["mean_score"] is None and (out["n"], out["n_unparsable"], out["n_failed"]) == (2, 2, 0)


def test_judge_generations_min_file_length_and_prompt_from_its_own_audio(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """SlamKit's judge reads files of at least 6 s and transcribes the prompt waveform it cut, the continuation's
    units vocoded alone. Stand-ins: the vocoder makes 0.1 s per unit, the ASR says how long each wave is."""
    monkeypatch.setattr(judge_module, "vocode", lambda vocoder, units: np.zeros(len(units) * 1600, np.float32))
    monkeypatch.setattr(judge_module, "transcribe",
                        lambda asr, waves, **kw: [f" {len(w) / 16000:.2f} s" for w in waves])
    source = tmp_path / "story.wav"
    sf.write(source, np.zeros(16000 * 8, np.float32), 16000)
    generations = [
        {"pair_id": "long", "file_s": 8.0, "cut_s": 2.5, "source_audio": str(source), "prompt_units": [1] * 30,
         "generated_units": [2] * 12},
        {"pair_id": "short", "file_s": 4.0, "cut_s": 3.0, "prompt_units": [1] * 30, "generated_units": [2] * 5},
        {"pair_id": "units", "file_s": 6.0, "cut_s": 3.0, "prompt_units": [1] * 7, "generated_units": [2] * 4},
        {"pair_id": "builtin", "prompt_units": [1] * 9, "generated_units": [2] * 3}]
    asked: list[str] = []
    out = judge_generations(generations, None, None, lambda p: asked.append(p) or "\\boxed{3}", tmp_path / "j",
                            min_file_s=6.0)
    assert [r["pair_id"] for r in out["rows"]] == ["long", "units", "builtin"]  # the 4 s file is not judged
    assert (out["n"], out["n_short"], out["n_length_unknown"], out["mean_score"]) == (3, 1, 1, 3.0)
    assert out["prompt_audio"] == {"source_audio": 1, "vocoded_units": 2}
    # the prompt: the source audio cut at cut_s, else the vocoded prompt units; the continuation alone
    assert [(r["prompt_text"], r["continuation_text"]) for r in out["rows"]] == [
        (" 2.50 s", " 1.20 s"), (" 0.70 s", " 0.40 s"), (" 0.90 s", " 0.30 s")]
    assert 'The text prompt is: " 2.50 s", and the text continuation is :" 1.20 s"' in asked[0]
    assert sf.info(out["rows"][0]["prompt_wav_path"]).frames == 40000
    every = judge_generations(generations, None, None, lambda p: "\\boxed{2}", tmp_path / "all", min_file_s=None)
    assert (every["n"], every["n_short"]) == (4, 0)


def test_rows_get_the_audio_their_prompt_was_cut_from(tmp_path: Path) -> None:
    from slam_core.config import EvalConfig
    from slam_core.eval.judge import with_source_audio

    for name in ("a.wav", "sub/b.wav"):
        (tmp_path / "prompts" / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "prompts" / name, np.zeros(16000, np.float32), 16000)
    cfg = EvalConfig(genppl_prompts="prompt_audio", prompt_audio=str(tmp_path / "prompts"), n_generate=2)
    rows = [{"pair_id": "a.wav", "cut_s": 0.5}, {"pair_id": "sub/b.wav", "cut_s": 0.5}, {"pair_id": "gone.wav"}]
    out = with_source_audio(rows, "prompt_audio", cfg, tmp_path)
    assert [r.get("source_audio") for r in out] == [str(tmp_path / "prompts" / "a.wav"),
                                                    str(tmp_path / "prompts" / "sub" / "b.wav"), None]
    assert with_source_audio(rows, "tsc_like", cfg, tmp_path) == rows  # built-in pairs keep no waveform
    missing = EvalConfig(genppl_prompts="prompt_audio", prompt_audio=str(tmp_path / "nowhere"))
    assert with_source_audio(rows, "prompt_audio", missing, tmp_path) == rows  # vocoded units instead
