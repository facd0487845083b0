"""GPTScore, the LLM judge: a 1-5 rating of a continuation given its prompt, from transcripts, with Lin et al.'s
prompt and SlamKit's settings (paper Section 3, "GPTScore"; docs/recipe.md, docs/published-artifacts.md).

Source: slp-rl/slamkit @ 388b402, `config/metric/llm_as_judge.yaml` (instruction, `min_file_length: 6`,
`use_alignment: true`, `num_files: null`, sampling of the speech LM), `slamkit/metric/generative_metric.py`
(`llm_as_judge`: `remove_prompt=True`) and `slamkit/metric/metric_utils.py` (`judge_text`, `OpenAIJudge`,
`extract_digit_from_boxed`). Field by field:

- instruction: the yaml's text verbatim (`JUDGE_INSTRUCTION`), the transcripts put in place of
  `[prompt_audio_transcription]` and `[generated_audio_transcription]` as Whisper gives them (not stripped);
- remove_prompt=True: the continuation's units are vocoded alone; the prompt is transcribed from its own audio;
  SlamKit transcribes the prompt *waveform* it cut; here a row that names its source audio (`source_audio`, with
  `cut_s`) is transcribed the same way, any other row from its vocoded prompt units (the built-in prompts keep no
  waveform);
- min_file_length 6 s: prompts cut from files shorter than `eval.judge_min_file_s` are not judged (rows carry
  the file's length as `file_s`; a row without it is judged and counted in `n_length_unknown`);
- a local HF causal LM judge: the plain instruction (no chat template), `generate(max_new_tokens=512,
  do_sample=True, temperature=0.8)` and nothing else, so top-k/top-p are the model's generation config as in
  SlamKit; an OpenAI-compatible `/v1/chat/completions` endpoint (SlamKit's `OpenAIJudge`, the paper's GPT-4o): one
  user message and the model name, nothing else (the service's sampling defaults). No endpoint is contacted
  unless the user names one;
- the score: the first `\\boxed{<digits>}` of the answer as an integer (SlamKit's regex; a score outside 1-5 is
  kept, as SlamKit does, and counted in `n_out_of_range`); an answer without one, or a failed request, is left
  out and the mean is over the parsed answers (as SlamKit), but both are counted and reported.

Kept different: each answer is sampled from its own seeded generator (SlamKit samples unseeded, in batches), so
a rerun gives the same scores; the prompts are those of the shared generations (`eval.n_generate` of
`eval.genppl_prompts`, cut with `eval.use_alignment`), where SlamKit's judge reads every file of its folder.
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

# SlamKit config/metric/llm_as_judge.yaml `instruction` (Lin et al., 2024), verbatim
JUDGE_INSTRUCTION = (
    "The task is evaluating the relevance and likelihood of the predicted text continuation, given the text "
    "prompt. You should also consider whether the meaning of the text continuation is making sense. The text "
    "prompt is: \"[prompt_audio_transcription]\", and the text continuation is :\"[generated_audio_transcription]\". "
    "You must give an overall rating from 1 to 5. The rating guideline is as below:\n"
    "1: The text continuation is very unlikely and irrelevant to the text prompt.\n"
    "2: The text continuation is unlikely and marginally relevant to the text prompt.\n"
    "3: The text continuation is moderately likely and relevant to the text prompt.\n"
    "4: The text continuation is likely and relevant to the text prompt.\n"
    "5: The text continuation is very likely and highly relevant.\n"
    " You should take the following steps to provide the score:\n"
    "First: briefly analyze the sample with the above definition.\n"
    "Second: MUST follow the output format as: \"The final answer is $\\boxed{x}$\". Where x is the score you "
    "are giving."
)
PROMPT_SLOT, CONTINUATION_SLOT = "[prompt_audio_transcription]", "[generated_audio_transcription]"
JUDGE_MAX_NEW_TOKENS, JUDGE_TEMPERATURE = 512, 0.8  # SlamKit metric_utils.judge_text
SCORE_RANGE = range(1, 6)
_BOXED = re.compile(r"\\boxed\{(\d+)\}")  # SlamKit metric_utils.extract_digit_from_boxed


class JudgeRequestError(RuntimeError):
    """One judge call that returned no answer (HTTP error, timeout, malformed response)."""


def build_judge_prompt(prompt_text: str, continuation_text: str) -> str:
    """The instruction with both transcripts in place, as SlamKit fills it (`str.replace`, text as given)."""
    return JUDGE_INSTRUCTION.replace(PROMPT_SLOT, prompt_text).replace(CONTINUATION_SLOT, continuation_text)


def parse_score(answer: str | None) -> int | None:
    """The integer in the answer's first `\\boxed{<digits>}` (SlamKit's rule: any integer, even outside 1-5);
    None when there is none."""
    match = _BOXED.search(answer or "")
    return int(match.group(1)) if match else None


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
    """POSTs the judge prompt to an OpenAI-compatible chat-completions endpoint and returns the reply text.

    As SlamKit's `OpenAIJudge`: the model and one user message; temperature and max_tokens are sent only when
    given (None: the service's defaults)."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, timeout_s: float = 60.0,
                 temperature: float | None = None, max_tokens: int | None = None, allow_insecure: bool = False) -> None:
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
        request_body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": prompt}]}
        for key, value in (("temperature", self.temperature), ("max_tokens", self.max_tokens)):
            if value is not None:
                request_body[key] = value
        body = json.dumps(request_body).encode()
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
    """A local HF causal LM judge as SlamKit's `judge_text`: the plain instruction (no chat template), sampled with
    temperature 0.8 for up to 512 new tokens, the rest of the sampling from the model's generation config.

    The generator is re-seeded on every call, so the same prompt always gets the same answer.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_new_tokens: int = JUDGE_MAX_NEW_TOKENS,
                 temperature: float = JUDGE_TEMPERATURE, seed: int = 0) -> None:
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
        # SlamKit passes do_sample and temperature only: top-k/top-p come from the model's generation config
        sampling = ({"do_sample": True, "temperature": self.temperature} if self.temperature > 0
                    else {"do_sample": False})
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

    Returns {"mean_score" (over parsed answers, as SlamKit; None if none), "n", "n_parsed", "n_unparsable",
    "n_failed", "n_out_of_range" (parsed scores outside 1-5, kept in the mean as SlamKit keeps them),
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
              "n_unparsable": len(rows) - len(scores) - n_failed, "n_failed": n_failed,
              "n_out_of_range": sum(1 for v in scores if v not in SCORE_RANGE), "rows": rows}
    log.info("judge: mean %s over %d parsed of %d (%d unparsable, %d failed, %d outside 1-5)", result["mean_score"],
             result["n_parsed"], result["n"], result["n_unparsable"], n_failed, result["n_out_of_range"])
    return result


def judged_rows(generations: Sequence[dict[str, Any]],
                min_file_s: float | None) -> tuple[list[dict[str, Any]], int, int]:
    """(rows to judge, rows left out as cut from a file shorter than `min_file_s`, rows of unknown length):
    SlamKit's `min_file_length` (`PromptDataset` skips such files). A row without `file_s` is judged."""
    if not min_file_s:
        return list(generations), 0, sum(1 for g in generations if g.get("file_s") is None)
    kept = [g for g in generations if g.get("file_s") is None or float(g["file_s"]) >= min_file_s]
    return kept, len(generations) - len(kept), sum(1 for g in kept if g.get("file_s") is None)


def with_source_audio(generations: Sequence[dict[str, Any]], prompt_set: str, eval_cfg: Any,
                      data_root: str | Path) -> list[dict[str, Any]]:
    """Generation rows with the audio their prompt was cut from (`source_audio`), looked up by prompt id in the
    file-based prompt set `prompt_set` (`eval.genppl_prompts`); rows of the built-in pairs (no waveform kept),
    or of a set that can no longer be listed, are returned as they are."""
    from slam_core.audio.io import BadAudioError
    from slam_core.eval.prompts import PromptSetError, prompt_sources

    if prompt_set == "tsc_like" or all(g.get("source_audio") for g in generations):
        return list(generations)
    try:
        audio = {s.prompt_id: s.audio for s in prompt_sources(prompt_set, eval_cfg, Path(data_root))}
    except (PromptSetError, BadAudioError, OSError) as err:
        log.warning("judge: prompts transcribed from their vocoded units (%s)", err)
        return list(generations)
    return [g if g.get("source_audio") or g.get("pair_id") not in audio else {**g, "source_audio": audio[g["pair_id"]]}
            for g in generations]


def prompt_wave(row: dict[str, Any], vocoder: Vocoder) -> tuple[np.ndarray, str]:
    """(16 kHz prompt audio, how it was made): the source audio cut at `cut_s` when the row names it (SlamKit
    transcribes the prompt waveform it cut), else the vocoded prompt units."""
    if row.get("source_audio") and row.get("cut_s") is not None:
        from slam_core.audio.io import read_segment_audio

        return read_segment_audio(row["source_audio"], None, float(row["cut_s"])), "source_audio"
    return vocode(vocoder, row["prompt_units"]), "vocoded_units"


def judge_generations(
    generations: Sequence[dict[str, Any]], vocoder: Vocoder, asr: Any, judge: Callable[[str], str],
    out_dir: str | Path, asr_max_tokens: int | None = None, asr_language: str | None = None,
    min_file_s: float | None = None,
) -> dict[str, Any]:
    """Rate the continuations of prompts cut from files of at least `min_file_s` (SlamKit: 6 s): the continuation
    vocoded alone (SlamKit remove_prompt=True), the prompt from its own audio (`prompt_wave`); both WAVs written to
    `out_dir`, transcribed, rated. The result adds "n_short", "n_length_unknown", "prompt_audio" (count of
    prompts by how they were made) and, per row, "pair_id" and both WAV paths."""
    out_dir = Path(out_dir)
    rows, n_short, n_unknown = judged_rows(generations, min_file_s)
    wav_paths: list[tuple[Path, Path]] = []
    waves: list[np.ndarray] = []
    made: dict[str, int] = {}
    for i, row in enumerate(rows):
        (p_wave, how), cont_wave = prompt_wave(row, vocoder), vocode(vocoder, row["generated_units"])
        made[how] = made.get(how, 0) + 1
        wav_paths.append((write_wav_16k(out_dir / f"judge_{i:04d}_prompt.wav", p_wave),
                          write_wav_16k(out_dir / f"judge_{i:04d}_continuation.wav", cont_wave)))
        waves += [p_wave, cont_wave]
    texts = transcribe(asr, waves, language=asr_language, max_tokens=asr_max_tokens)
    result = judge_transcripts(list(zip(texts[0::2], texts[1::2])), judge)
    for out_row, gen, (prompt_wav, cont_wav) in zip(result["rows"], rows, wav_paths):
        out_row.update(pair_id=gen.get("pair_id"), prompt_wav_path=str(prompt_wav), wav_path=str(cont_wav))
    if n_short:
        log.info("judge: %d of %d prompts left out, cut from files shorter than %s s", n_short, len(generations),
                 min_file_s)
    return {**result, "n_short": n_short, "n_length_unknown": n_unknown, "prompt_audio": made}
