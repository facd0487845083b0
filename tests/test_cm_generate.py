"""Cross-modal generation (SlamKit's cm_generate): speech prompt `[BOS, <speech> u..., <text>]` -> sampled text with
unit tokens banned, decoded without markers; GenPPL / auto-BLEU under a judge LM; the task's catalog rows, the
report section, and the run story's Prefect artifacts carrying the cm_tsc_* and cm_generate_* rows."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from slam_core.config import ConfigError, EvalConfig, InterleaveConfig, ModelConfig, apply_overrides  # noqa: E402
from slam_core.eval.cm_generate import (  # noqa: E402
    METRICS, continuation_text, generate_text, prompt_files, prompt_ids, score_continuations,
)
from slam_core.eval.generate import sample_ids  # noqa: E402
from slam_core.eval.text_metrics import auto_bleu, transcript_nll  # noqa: E402
from slam_core.lm.interleave import InterleavingTokenizer  # noqa: E402
from slam_core.lm.interleave_model import init_interleaved_lm  # noqa: E402
from slam_core.lm.model import resolve_base  # noqa: E402
from slam_core.lm.text_tokenizer import load_text_tokenizer, tiny_tokenizer_dir  # noqa: E402

STORIES = ["Tom lost his red ball in the park.", "Anna baked a cake for her mom.",
           "The dog was hungry after the walk.", "A bird sang in the old tree."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny interleaved init (text BPE of 300 + 64 units + 2 markers), usable as a checkpoint, and its tokenizer."""
    root = tmp_path_factory.mktemp("lm")
    text_tok = load_text_tokenizer(tiny_tokenizer_dir(root, STORIES * 3, vocab_size=300))
    cfg = ModelConfig(base="tiny-qwen2", context_len=256, dtype="float32", tiny_hidden_size=32, tiny_layers=1)
    out = init_interleaved_lm(cfg, resolve_base(cfg, root), text_tok, root / "init", n_units=64, seed=0)
    return SimpleNamespace(init_dir=out["path"], tok=InterleavingTokenizer(text_tok, n_units=64))


class TableLM(torch.nn.Module):
    """A stand-in causal LM whose next-token logits are a row of `table` picked by the last input token."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.head = torch.nn.Linear(1, table.shape[0], bias=False)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids[:, -1]][:, None, :], past_key_values=None)


def _unit_loving_lm(tok: InterleavingTokenizer, word: int) -> TableLM:
    """After <text> a unit is likeliest, then `word`; after `word` a unit, then <speech>; after <speech>, a unit,
    then EOS. With units banned, greedy decoding gives `word <speech> EOS`."""
    v = tok.vocab
    table = torch.zeros(v.size, v.size)
    units = slice(v.unit_offset, v.speech_id)
    for after, second in ((v.text_id, word), (word, v.speech_id), (v.speech_id, v.eos_id)):
        table[after, units] = 30.0
        table[after, second] = 20.0
    return TableLM(table)


def test_prompt_is_speech_then_the_text_marker(tiny) -> None:
    v = tiny.tok.vocab
    ids = prompt_ids(tiny.tok, [5, 9, 5])
    assert ids.tolist() == [v.bos_id, v.speech_id, v.unit_offset + 5, v.unit_offset + 9, v.unit_offset + 5, v.text_id]
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        prompt_ids(tiny.tok, [64])


def test_continuation_drops_markers_and_units_and_stops_at_eos(tiny) -> None:
    tok, v = tiny.tok, tiny.tok.vocab
    hello, world = tok.text_ids("Tom lost"), tok.text_ids(" his ball")
    ids = [v.text_id, *hello, v.speech_id, v.unit_offset + 3, v.text_id, *world, v.eos_id, *tok.text_ids(" park")]
    assert continuation_text(tok, ids) == "Tom lost his ball"
    assert continuation_text(tok, [v.eos_id, *hello]) == ""


def test_banned_units_are_never_drawn(tiny) -> None:
    tok, v = tiny.tok, tiny.tok.vocab
    word = tok.text_ids("Tom")[0]
    lm = _unit_loving_lm(tok, word)
    prompt = [prompt_ids(tok, [1, 2, 3])]
    free = sample_ids(lm, prompt, [0], 1.0, 1, 4, 1.0, eos_id=v.eos_id, pad_id=v.pad_id)[0]
    assert v.unit_offset <= free[0] < v.speech_id  # without the ban the unit wins: the ban is what the test sees
    rows = generate_text(lm, tok, [{"item_id": "a", "prompt_units": [1, 2, 3]}], top_k=1, max_new_tokens=10)
    assert rows[0]["continuation"] == tok.text_tokenizer.decode([word]) and rows[0]["new_tokens"] == 2
    sampled = generate_text(lm, tok, [{"item_id": "a", "prompt_units": [1, 2, 3]}], temperature=5.0, top_k=25,
                            max_new_tokens=40, seed=3)[0]
    assert sampled["new_tokens"] > 0


def test_generation_is_seeded_and_batch_independent(tiny) -> None:
    from slam_core.eval.pairs import load_causal_lm

    model = load_causal_lm(tiny.init_dir, torch.device("cpu"))
    prompts = [{"item_id": f"p{i}", "prompt_units": list(range(i, i + 4 + 3 * i))} for i in range(4)]
    kw = dict(temperature=0.8, top_k=25, max_new_tokens=12, seed=7)
    batched = generate_text(model, tiny.tok, prompts, batch_size=4, **kw)
    alone = [generate_text(model, tiny.tok, [p], batch_size=1, **kw)[0] for p in prompts]
    assert [r["continuation"] for r in batched] == [r["continuation"] for r in alone]
    assert [r["continuation"] for r in generate_text(model, tiny.tok, prompts, **kw)] == [
        r["continuation"] for r in batched]
    other = generate_text(model, tiny.tok, prompts, **{**kw, "seed": 8})
    assert [r["continuation"] for r in other] != [r["continuation"] for r in batched]
    v = tiny.tok.vocab
    for r in batched:  # the text tokens only: re-encoding a continuation gives no unit and no marker
        assert all(t < v.unit_offset for t in tiny.tok.text_ids(r["continuation"]))


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slam_core.rehearsal.models import build_ppl_lm, shapes_for

    words = {w.strip(".").lower() for s in STORIES for w in s.split()}
    out = tmp_path_factory.mktemp("judge") / "lm"
    build_ppl_lm(out, shapes_for("tiny"), words, seed=1)
    return out


def test_genppl_and_auto_bleu_of_the_continuations(judge_dir: Path) -> None:
    from slam_core.eval.text_metrics import load_ppl_lm

    lm, lm_tok = load_ppl_lm(str(judge_dir), "cpu")
    rows = [{"item_id": "a", "continuation": " the dog the dog was hungry"},
            {"item_id": "b", "continuation": " Anna baked a cake"}, {"item_id": "c", "continuation": ""}]
    res = score_continuations(rows, lm, lm_tok, batch_size=2)
    alone = [transcript_nll(lm, lm_tok, [r["continuation"]])[0] for r in rows[:2]]
    assert res["genppl"] == pytest.approx(math.exp(np.mean(alone)), rel=1e-4)
    assert (res["n"], res["n_samples"], res["n_empty"]) == (2, 3, 1)
    assert res["auto_bleu"] == pytest.approx((auto_bleu(rows[0]["continuation"]) + 0 + 0) / 3)
    assert auto_bleu(rows[0]["continuation"]) > 0  # "the dog" repeats
    without = score_continuations(rows, None, None)
    assert without["genppl"] is None and without["auto_bleu"] == res["auto_bleu"] and "no judge LM" in without["note"]


def _layout(root: Path, n: int) -> Path:
    for i in range(n):
        for part, text in (("mutual", STORIES[i % 4]), ("correct", "He smiled."), ("incorrect", "The sea.")):
            (root / f"s{i}_{part}.wav").write_bytes(b"")  # the generation step reads the texts only
            (root / f"s{i}_{part}.txt").write_text(text + "\n")
    return root


def test_prompt_files_are_the_first_mutual_items_sorted(tmp_path: Path) -> None:
    _layout(tmp_path, 7)
    got = prompt_files(tmp_path, 5)
    assert [i for i, _, _ in got] == ["s0", "s1", "s2", "s3", "s4"]
    assert got[1][1] == tmp_path / "s1_mutual.wav" and got[1][2] == STORIES[1]
    with pytest.raises(ValueError, match="interleave.cm_generate_prompts"):
        prompt_files(tmp_path, 0)


def test_config_defaults_are_slamkits_and_max_new_tokens_must_fit(tiny) -> None:
    from slam_core.presets import get_preset

    icfg = InterleaveConfig()
    assert "cm_generate" in icfg.cross_modal_metrics
    assert (icfg.cm_generate_prompts, icfg.cm_generate_prompt_s, icfg.cm_generate_temperature,
            icfg.cm_generate_top_k, icfg.cm_generate_max_new_tokens) == (5, 3.0, 0.8, 25, 150)
    cfg = apply_overrides(get_preset("smoke_interleaved"), {"interleave.cm_generate_max_new_tokens": 512})
    with pytest.raises(ConfigError, match="interleave.cm_generate_max_new_tokens: 512 .*model.context_len 512"):
        cfg.resolve()
    apply_overrides(cfg, {"interleave.cross_modal_metrics": ["cm_tsc_s2t"]}).resolve()  # not run: not checked


def _prompts_parquet(path: Path, n: int) -> Path:
    pq.write_table(pa.table({"segment_id": [f"s{i}" for i in range(n)],
                             "units": pa.array([[(3 * i + k) % 64 for k in range(20)] for i in range(n)],
                                               pa.list_(pa.uint16())),
                             "cut_s": pa.array([3.0] * n, pa.float32())}), path)
    return path


def test_task_rows_report_and_run_story(prefect_harness, tiny, judge_dir: Path, tmp_path: Path) -> None:
    """The task records both rows (texts in details); the report shows them in their own section; the run story's
    Prefect table and summary artifacts carry the cross-modal StoryCloze rows and the cm_generate rows."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.context import get_run_context

    from data_catalog import Catalog
    from slam_core.eval import report
    from tasks import interleave
    from tasks.artifacts import publish_run_story
    from tasks.evaluate import accuracy_rows

    root, ckpt = tmp_path / "data", tiny.init_dir
    root.mkdir()
    (tmp_path / "layout").mkdir()
    layout, prompts = _layout(tmp_path / "layout", 3), _prompts_parquet(tmp_path / "prompts.parquet", 3)
    icfg = InterleaveConfig(cm_generate_prompts=3, cm_generate_max_new_tokens=16)
    catalog = Catalog(root / "catalog.duckdb")

    @flow(name="cm-story")
    def story(ppl_lm: str) -> tuple[str, list[dict]]:
        catalog.record_eval("r", ckpt, "cm_tsc_s2t", 0.5, 3, 0.2, 0.8, details={"fingerprint": "tsc"})
        interleave.cm_generate("r", ckpt, tiny.init_dir, str(prompts), str(layout), icfg, EvalConfig(ppl_lm=ppl_lm),
                               0, "cpu", str(tmp_path / "out"), f"gen-{Path(ppl_lm).name}", str(root))
        html = report.write_report(root / "reports" / "r" / "index.html", "r", None,
                                   accuracy_rows(catalog, "r"), None, {})
        publish_run_story("r", str(root), str(html))
        return str(get_run_context().flow_run.id), str(html)

    # no judge LM: GenPPL recorded as skipped (why), auto-BLEU still measured, nothing cached under the fingerprint
    story(str(tmp_path / "no-such-lm"))
    rows = {r["metric"]: r for r in catalog.eval_results(run="r")}
    assert rows["cm_generate_genppl"]["value"] is None and "no-such-lm" in json.loads(
        rows["cm_generate_genppl"]["details"])["skipped"]
    assert rows["cm_generate_auto_bleu"]["value"] is not None and not catalog.has_fingerprint("gen-no-such-lm")

    run_id, html_path = story(str(judge_dir))
    rows = {r["metric"]: r for r in catalog.eval_results(run="r")}
    assert set(METRICS) | {"cm_tsc_s2t"} <= set(rows) and catalog.has_fingerprint("gen-lm")
    gen = rows["cm_generate_genppl"]
    details = json.loads(gen["details"])
    assert gen["value"] is not None and gen["value"] > 1 and gen["n"] + details["n_empty"] == 3
    assert [s["item_id"] for s in details["samples"]] == ["s0", "s1", "s2"]
    assert details["samples"][1]["prompt_text"] == STORIES[1] and "SlamKit" in details["slamkit_difference"]
    saved = json.loads((tmp_path / "out" / "cm_generate.json").read_text())
    assert [r["continuation"] for r in saved["rows"]] == [s["continuation"] for s in details["samples"]]

    html = Path(html_path).read_text()
    assert "Cross-modal StoryCloze" in html and "Cross-modal generation: speech prompt → text" in html
    assert html.count(STORIES[1]) == 1 and "cm_generate_auto_bleu" in html

    with get_client(sync_client=True) as client:
        own = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))}
    table = own["r-metrics"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert {r["metric"] for r in table} == {"cm_tsc_s2t", "cm_generate_genppl", "cm_generate_auto_bleu"}
    by_metric = {r["metric"]: r for r in table}
    assert by_metric["cm_tsc_s2t"]["value"] == 0.5 and by_metric["cm_generate_genppl"]["value"] is not None
    assert "SlamKit" in by_metric["cm_generate_genppl"]["note"]
    summary = own["r-summary"].data
    assert "| cm_tsc_s2t | 0.5 |" in summary and "| cm_generate_genppl |" in summary


def test_prompts_are_the_mutual_wavs_cut_at_prompt_s_then_encoded(tmp_path: Path) -> None:
    """SlamKit cuts the waveform at prompt_length (w[:int(3 * 16000)]) and then extracts units: the stage's units
    are those of the cut wave (not the whole wave's units cut afterwards), and a shorter prompt is kept whole."""
    import soundfile as sf

    from slam_core.audio.io import read_audio
    from slam_core.config import SynthConfig, UnitsConfig
    from slam_core.eval.cross_modal import write_cross_modal_layout
    from slam_core.lm.interleave_stage import tokenise_cm_prompts
    from slam_core.synth.backends import get_backend
    from slam_core.synth.shards import speak_16k
    from slam_core.units import extract

    backend = get_backend(SynthConfig(backend="espeak", voices=["en-us"]))
    items = [("a", " ".join(STORIES), "He smiled.", "The sea."), ("b", "Hi.", "Yes.", "No."),
             ("c", STORIES[0], "x.", "y.")]
    layout = write_cross_modal_layout(items, lambda t: speak_16k(backend, t, "en-us", 16000)[0], tmp_path / "cm")
    cfg = UnitsConfig(encoder="tiny", layer=2, n_units=64, batch_size=4)
    feats = np.concatenate(extract.build_extractor(cfg, tmp_path, centroids=None, device="cpu").features(
        [sf.read(p, dtype="float32")[0] for p in sorted(layout.rglob("*_mutual.wav"))]))
    centroids = tmp_path / "centroids.npy"
    np.save(centroids, feats[np.random.default_rng(0).choice(len(feats), 64)].astype(np.float32))
    out = tokenise_cm_prompts(layout, 2, 3.0, centroids, cfg, tmp_path, "cpu", tmp_path / "p.parquet")
    rows = pq.read_table(out["path"]).to_pylist()
    assert [r["segment_id"] for r in rows] == ["stand_in/a", "stand_in/b"]  # the first 2 of 3, sorted
    wave_a = read_audio(layout / "stand_in" / "a_mutual.wav")
    wave_b = read_audio(layout / "stand_in" / "b_mutual.wav")
    assert len(wave_a) > 3 * 16000 > len(wave_b)
    assert rows[0]["cut_s"] == pytest.approx(3.0) and rows[1]["cut_s"] == pytest.approx(len(wave_b) / 16000, abs=1e-3)
    extractor = extract.build_extractor(cfg, tmp_path, centroids=centroids, device="cpu")
    cut_units = extractor.to_units(extractor.frames([wave_a[: 3 * 16000]], 1)[0])[0]
    assert rows[0]["units"] == [int(u) for u in cut_units]
