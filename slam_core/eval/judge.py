"""LLM-as-judge: a 1-5 rating of a continuation given its prompt, from transcripts (SlamKit `metric=llm_as_judge`,
docs/published-artifacts.md).

The judge is either a local HF causal LM (sampled, no chat template, as SlamKit) or an OpenAI-compatible
`/v1/chat/completions` endpoint that the user names explicitly (no default remote URL). Answers are parsed from
`\\boxed{x}`, else from a single bare digit 1-5; unparsable answers and failed requests are counted and reported,
never dropped from the denominator silently (SlamKit does).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slam_core.errors import InputError
from slam_core.eval.asr import transcribe
from slam_core.eval.vocoder import Vocoder, vocode, write_wav_16k

log = logging.getLogger(__name__)

JUDGE_INSTRUCTION = (
    "You are judging a spoken story continuation. Below are an automatic transcript of the beginning of a "
    "story (the prompt) and of how a model continued it (the continuation). Rate how likely and relevant the "
    "continuation is as a follow-up of the prompt on a scale from 1 (unrelated or nonsensical) to 5 (a natural, "
    "fluent, on-topic continuation). Transcripts may contain recognition errors; judge the content.\n\n"
    "Prompt: {prompt}\nContinuation: {continuation}\n\n"
    "Answer with the score only, written as \\boxed{{x}} where x is 1, 2, 3, 4 or 5."
)
_BOXED = re.compile(r"\\boxed\{\s*([^{}]*?)\s*\}")
# a lone digit, not part of a number ("10", "3.5"); a sentence-final "4." still counts
_BARE_DIGIT = re.compile(r"(?<!\d)(?<!\d\.)([1-5])(?!\d|\.\d)")


class JudgeRequestError(RuntimeError):
    """One judge call that returned no answer (HTTP error, timeout, malformed response)."""


def build_judge_prompt(prompt_text: str, continuation_text: str) -> str:
    return JUDGE_INSTRUCTION.format(prompt=prompt_text.strip(), continuation=continuation_text.strip())


def parse_score(answer: str | None) -> int | None:
    """The 1-5 score in an answer: the last `\\boxed{x}`, else the only distinct bare digit 1-5; None otherwise."""
    if not answer:
        return None
    boxed = _BOXED.findall(answer)
    if boxed:
        value = boxed[-1].strip()
        return int(value) if value in {"1", "2", "3", "4", "5"} else None
    digits = set(_BARE_DIGIT.findall(answer))
    return int(digits.pop()) if len(digits) == 1 else None


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is this machine (localhost, 127.0.0.0/8, ::1): traffic that never leaves it."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_key_transport(base_url: str, allow_insecure: bool = False) -> None:
    """Refuse to send an API key as a bearer token in clear text (plain http) to another machine: anyone on the
    path could read and reuse it. Loopback endpoints (a local server) and https are fine."""
    if base_url.startswith("http://") and not is_loopback_url(base_url) and not allow_insecure:
        raise InputError(
            "the judge API key would be sent unencrypted (plain http) to another machine", "eval.judge_endpoint",
            f"use https:// for {urllib.parse.urlsplit(base_url).hostname}, a 127.0.0.1 endpoint, no key "
            f"(eval.judge_api_key_env=null), or, on a network you trust, --set eval.judge_allow_insecure=true")


class EndpointJudge:
    """POSTs the judge prompt to an OpenAI-compatible chat-completions endpoint and returns the reply text."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, timeout_s: float = 60.0,
                 temperature: float = 0.0, max_tokens: int = 512, allow_insecure: bool = False) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge endpoint: base_url must be an explicit http(s) URL, got {base_url!r}")
        if not model:
            raise ValueError("judge endpoint: a model name is required")
        self.api_key = None
        if api_key_env:
            check_key_transport(base_url, allow_insecure)
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise ValueError(f"judge endpoint: environment variable {api_key_env} (API key) is not set")
        base = base_url.rstrip("/")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model, self.timeout_s, self.temperature, self.max_tokens = model, timeout_s, temperature, max_tokens

    def __call__(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": self.temperature, "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode("utf-8"))
            return str(payload["choices"][0]["message"]["content"])
        except urllib.error.HTTPError as err:
            raise JudgeRequestError(f"{self.url}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise JudgeRequestError(f"{self.url}: {type(err).__name__}: {err}") from None
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise JudgeRequestError(f"{self.url}: malformed response ({type(err).__name__}: {err})") from None


class LocalLMJudge:
    """A local HF causal LM judge: plain-text prompt (no chat template), sampled like SlamKit (T 0.8).

    The generator is re-seeded on every call, so the same prompt always gets the same answer.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_new_tokens: int = 512, temperature: float = 0.8,
                 seed: int = 0) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed

    def _fit_context(self, ids: torch.Tensor) -> torch.Tensor:
        """Keep the prompt's end when prompt + answer would overflow the model's positions."""
        cfg = self.model.config
        max_positions = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        if not max_positions or ids.shape[1] + self.max_new_tokens <= max_positions:
            return ids
        keep = max(1, max_positions - self.max_new_tokens)
        log.warning("judge prompt of %d tokens cut to its last %d (context %d)", ids.shape[1], keep, max_positions)
        return ids[:, -keep:]

    @torch.no_grad()
    def __call__(self, prompt: str) -> str:
        device = next(self.model.parameters()).device
        ids = self._fit_context(self.tokenizer(prompt, return_tensors="pt")["input_ids"].to(device))
        # top_k/top_p pinned so a model's own generation_config cannot change the sampling recipe
        sampling = ({"do_sample": True, "temperature": self.temperature, "top_k": 0, "top_p": 1.0}
                    if self.temperature > 0 else {"do_sample": False})
        pad_id = self.tokenizer.pad_token_id
        pad_id = self.tokenizer.eos_token_id if pad_id is None else pad_id
        torch.manual_seed(self.seed)
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=pad_id,
                                  max_new_tokens=self.max_new_tokens, **sampling)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def load_local_judge(name_or_dir: str | Path, device: str = "auto", **kwargs: Any) -> LocalLMJudge:
    """A LocalLMJudge from a hub id or local save_pretrained dir (one clear error if missing)."""
    from transformers import AutoTokenizer

    from slam_core.device import pick_device
    from slam_core.eval.pairs import CheckpointNotFoundError, load_causal_lm

    model = load_causal_lm(name_or_dir, pick_device(device), what="judge LM")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_dir))
    except (OSError, ValueError) as err:
        raise CheckpointNotFoundError(
            f"judge LM tokenizer: cannot load '{name_or_dir}' ({type(err).__name__}); pass a local dir with "
            "tokenizer files") from None
    return LocalLMJudge(model, tokenizer, **kwargs)


def judge_transcripts(items: Sequence[tuple[str, str]], judge: Callable[[str], str]) -> dict[str, Any]:
    """Rate (prompt transcript, continuation transcript) pairs.

    Returns {"mean_score" (over parsed answers; None if none), "n", "n_parsed", "n_unparsable", "n_failed",
    "rows": [{"prompt_text", "continuation_text", "answer", "score", "error"}]}.
    """
    rows = []
    for prompt_text, continuation_text in items:
        answer, error = None, None
        try:
            answer = judge(build_judge_prompt(prompt_text, continuation_text))
        except JudgeRequestError as err:
            error = str(err)
            log.warning("judge request failed: %s", error)
        rows.append({"prompt_text": prompt_text, "continuation_text": continuation_text, "answer": answer,
                     "score": parse_score(answer), "error": error})
    scores = [r["score"] for r in rows if r["score"] is not None]
    n_failed = sum(1 for r in rows if r["error"] is not None)
    result = {"mean_score": float(np.mean(scores)) if scores else None, "n": len(rows), "n_parsed": len(scores),
              "n_unparsable": len(rows) - len(scores) - n_failed, "n_failed": n_failed, "rows": rows}
    log.info("judge: mean %s over %d parsed of %d (%d unparsable, %d failed)", result["mean_score"],
             result["n_parsed"], result["n"], result["n_unparsable"], n_failed)
    return result


def judge_generations(
    generations: Sequence[dict[str, Any]], vocoder: Vocoder, asr: Any, judge: Callable[[str], str],
    out_dir: str | Path, asr_max_tokens: int | None = None, asr_language: str | None = None,
) -> dict[str, Any]:
    """Vocode prompt and continuation separately (SlamKit remove_prompt=True), write both WAVs to `out_dir`,
    transcribe them and rate each pair; the result rows also carry "pair_id" and both WAV paths."""
    out_dir = Path(out_dir)
    wav_paths: list[tuple[Path, Path]] = []
    waves: list[np.ndarray] = []
    for i, row in enumerate(generations):
        prompt_wave, cont_wave = vocode(vocoder, row["prompt_units"]), vocode(vocoder, row["generated_units"])
        wav_paths.append((write_wav_16k(out_dir / f"judge_{i:04d}_prompt.wav", prompt_wave),
                          write_wav_16k(out_dir / f"judge_{i:04d}_continuation.wav", cont_wave)))
        waves += [prompt_wave, cont_wave]
    texts = transcribe(asr, waves, language=asr_language, max_tokens=asr_max_tokens)
    result = judge_transcripts(list(zip(texts[0::2], texts[1::2])), judge)
    for row, gen, (prompt_wav, cont_wav) in zip(result["rows"], generations, wav_paths):
        row.update(pair_id=gen.get("pair_id"), prompt_wav_path=str(prompt_wav), wav_path=str(cont_wav))
    return result
