"""LLM judge: answer parsing, an OpenAI-compatible endpoint served on 127.0.0.1, a tiny local LM judge."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402

from chat_stub import chat_endpoint  # noqa: E402
from slam_core.eval.judge import (  # noqa: E402
    EndpointJudge, JudgeRequestError, build_judge_prompt, judge_transcripts, load_local_judge, parse_score,
)

# continuation transcript -> canned endpoint reply (None: HTTP 500)
CANNED = {"good": "The continuation fits well. \\boxed{4}", "ok": "\\boxed{ 2 }", "bare": "Score: 5",
          "vague": "somewhere between 2 and 3", "boxed_bad": "\\boxed{7}", "broken": None}


def test_parse_score() -> None:
    assert parse_score("\\boxed{3}") == 3 and parse_score("first \\boxed{1}, final \\boxed{5}") == 5
    assert parse_score("I'd say 4.") == 4 and parse_score("4") == 4 and parse_score("4, yes 4") == 4
    assert parse_score("\\boxed{3.5}") is None and parse_score("\\boxed{0}") is None
    assert parse_score("2 or 3") is None and parse_score("3.5") is None and parse_score("10") is None
    assert parse_score("") is None and parse_score(None) is None and parse_score("no idea") is None


def _canned_reply(body: dict) -> str | None:
    return CANNED[body["messages"][0]["content"].split("Continuation: ")[1].split("\n")[0]]


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
    assert [r["score"] for r in out["rows"]] == [4, 2, 5, None, None, None]
    assert out["mean_score"] == pytest.approx((4 + 2 + 5) / 3)
    assert (out["n"], out["n_parsed"], out["n_unparsable"], out["n_failed"]) == (6, 3, 2, 1)
    assert "HTTP 500" in out["rows"][-1]["error"] and out["rows"][3]["answer"] == CANNED["vague"]
    request = seen[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["model"] == "judge-model" and request["body"]["temperature"] == 0.0
    assert request["body"]["messages"][0]["content"] == build_judge_prompt("once upon a time", "good")


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
    vocab = {"<unk>": 0, "<eos>": 1, "the": 2, "cat": 3, "4": 4, "boxed": 5}
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
    judge = load_local_judge(_constant_word_lm(tmp_path, "4"), device="cpu", max_new_tokens=3)
    out = judge_transcripts(items, judge)
    assert [r["answer"] for r in out["rows"]] == ["4 4 4", "4 4 4"]
    assert out["mean_score"] == 4.0 and (out["n_parsed"], out["n_unparsable"]) == (2, 0)
    assert judge_transcripts(items, judge)["rows"] == out["rows"]  # re-seeded: same answers

    garbage = load_local_judge(_constant_word_lm(tmp_path, "cat"), device="cpu", max_new_tokens=3)
    out = judge_transcripts(items, garbage)
    assert out["mean_score"] is None and (out["n"], out["n_unparsable"], out["n_failed"]) == (2, 2, 0)
