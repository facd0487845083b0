"""Training on the interleaved mix: TOKEN_DOCS shards (ids already in the joint vocabulary, uint32) through the same
token stores, examples and packed loader as units shards, mixed by SlamKit's train_inter_scale ratios; a few steps
of pre-training from an interleaved TWIST init; the presets and the report's cross-modal section."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from slam_core.config import ConfigError, ModelConfig, TrainConfig, apply_overrides  # noqa: E402
from slam_core.lm.data import PackedLoader, sources_from_paths  # noqa: E402
from slam_core.lm.examples import ShardStore, source_examples  # noqa: E402
from slam_core.lm.interleave_data import INTER_SCALE_RATIOS, write_token_docs  # noqa: E402
from slam_core.lm.interleave_stage import modalities  # noqa: E402
from slam_core.presets import INTER_SCALE_WEIGHTS, get_preset  # noqa: E402

BIG = 152_000  # a Qwen-sized joint vocabulary: ids past uint16


def _docs(kind: str, n: int, seed: int, hi: int = BIG, length: tuple[int, int] = (5, 90)) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(f"{kind}-{i:03d}", rng.integers(0, hi, rng.integers(*length)).astype(np.int64)) for i in range(n)]


def _shard(root: Path, kind: str, docs: list[tuple[str, np.ndarray]], vocab: int = BIG + 10) -> Path:
    path = root / "tokens" / kind / "train" / f"{kind}-00000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_token_docs(docs, kind, path, vocab)
    return path


def test_token_docs_store_keeps_ids_past_uint16_and_cuts_at_the_context(tmp_path: Path) -> None:
    docs = _docs("interleaved", 30, 0) + _docs("small", 5, 1, hi=1000) + [("empty", np.zeros(0, np.int64))]
    shard = _shard(tmp_path, "interleaved", docs)
    store = ShardStore.open(shard, tmp_path / "stores")
    assert store.tokens.dtype == np.uint32 and store.doc_max_token.dtype == np.uint32
    assert store.empty_ids() == ["empty"] and int(store.doc_max_token.max()) > np.iinfo(np.uint16).max
    ex = source_examples("interleaved", [shard], 32, "train", 0.0, None, tmp_path / "stores")
    expected = [tuple(d[i:i + 32]) for _, d in docs if len(d) for i in range(0, len(d), 32)]
    assert [tuple(ex.example(i)) for i in range(len(ex))] == expected  # stored as written: no BOS/EOS added
    small = source_examples("interleaved", [shard], 32, "train", 0.0, 100_000, tmp_path / "stores")
    out_of_range = sorted(doc for doc, reason in small.skipped if reason == "unit_out_of_range")
    assert out_of_range == sorted(d for d, t in docs if len(t) and t.max() >= 100_000) and len(out_of_range) == 30
    assert {small.example(i).max() for i in range(len(small))} and small.n_tokens == sum(len(t) for _, t in docs[30:])


def test_the_three_sets_mix_by_the_inter_scale_ratios(tmp_path: Path) -> None:
    shards = [_shard(tmp_path, kind, _docs(kind, 300, seed, length=(3, 12)))
              for seed, kind in enumerate(("text", "interleaved", "speech"))]
    sources = sources_from_paths(shards, INTER_SCALE_WEIGHTS)
    assert [s.name for s in sources] == ["interleaved", "speech", "text"]
    loader = PackedLoader(sources, context_len=16, micro_batch_size=4, seed=3, vocab_size=BIG + 10,
                          store_dir=tmp_path / "stores")
    assert loader.mix == {k: round(v / sum(INTER_SCALE_RATIOS.values()), 6)
                          for k, v in sorted(INTER_SCALE_RATIOS.items())}
    ids = {kind: {tuple(d) for _, d in _docs(kind, 300, seed, length=(3, 12))}
           for seed, kind in enumerate(("text", "interleaved", "speech"))}
    drawn = {k: 0 for k in ids}
    top = 0
    for _ in range(20):
        step = loader.next_step(16)
        assert step.n_examples == 16 and step.n_tokens == step.n_targets + 16
        top = max([top] + [int(b["input_ids"].max()) for b in step.batches])
    assert top > np.iinfo(np.uint16).max  # the ids reach the model as written
    loader2 = PackedLoader(sources, context_len=16, micro_batch_size=4, seed=3, vocab_size=BIG + 10,
                           store_dir=tmp_path / "stores")
    for _ in range(2000):
        ex = tuple(loader2._next_example().tolist())
        drawn[next(k for k, v in ids.items() if ex in v)] += 1
    for kind, ratio in INTER_SCALE_RATIOS.items():
        assert abs(drawn[kind] / 2000 - ratio) < 0.04, drawn


def test_pretrain_on_token_docs_from_an_interleaved_init(tmp_path: Path) -> None:
    from slam_core.lm.interleave import InterleavingTokenizer
    from slam_core.lm.interleave_model import init_interleaved_lm
    from slam_core.lm.model import resolve_base
    from slam_core.lm.text_tokenizer import load_text_tokenizer, tiny_tokenizer_dir
    from slam_core.lm.train import pretrain

    texts = ["the dog ran to the park", "a cat sat in the sun and sang"] * 4
    text_tok = load_text_tokenizer(tiny_tokenizer_dir(tmp_path, texts, vocab_size=300))
    model_cfg = ModelConfig(base="tiny-qwen2", context_len=64, dtype="float32", tiny_hidden_size=32, tiny_layers=1)
    init = init_interleaved_lm(model_cfg, resolve_base(model_cfg, tmp_path), text_tok, tmp_path / "init", seed=0)
    tok = InterleavingTokenizer(text_tok)
    rng = np.random.default_rng(0)
    shards = [_shard(tmp_path, "text", [(f"t{i}", tok.encode_text(texts[i % 2])) for i in range(40)], tok.vocab.size),
              _shard(tmp_path, "speech", [(f"s{i}", tok.encode_speech(rng.integers(0, 500, 50))) for i in range(40)],
                     tok.vocab.size)]
    cfg = TrainConfig(budget_s=1e6, max_steps=4, schedule_by="steps", lr=3e-3, min_lr=1e-4, micro_batch_size=2,
                      grad_accum=2, checkpoint_every_s=1e9, log_every_steps=1, calibration_steps=1, val_fraction=0.0,
                      dataset_weights={"text": 1.0, "speech": 1.0})
    out = pretrain(Path(init["path"]), shards, model_cfg, cfg, tmp_path / "run", seed=0, device="cpu",
                   tensorboard=False)
    assert out["steps"] == 4 and out["mix"] == {"speech": 0.5, "text": 0.5} and out["skipped"] == []
    assert np.isfinite(out["final_loss"])


def test_interleaved_presets() -> None:
    assert INTER_SCALE_WEIGHTS == INTER_SCALE_RATIOS
    cfg = get_preset("slam_interleaved")
    assert cfg.model.context_len == 2048 and cfg.train.dataset_weights == INTER_SCALE_WEIGHTS
    assert (cfg.train.lr, cfg.train.min_lr, cfg.train.warmup_frac, cfg.train.warmup_min_steps) == (5e-4, 5e-5, 0.01, 0)
    assert (cfg.train.micro_batch_size, cfg.train.grad_accum, cfg.train.grad_clip) == (8, 1, 0.5)
    assert (cfg.interleave.method, cfg.interleave.span, cfg.interleave.prob) == ("poisson", 10.0, 0.3)
    assert not cfg.dpo.enabled and cfg.corpus.spokenswag_dir is None
    smoke = get_preset("smoke_interleaved")
    assert smoke.interleave.enabled and smoke.model.base == "tiny-qwen2" and smoke.run.device == "cpu"
    assert not get_preset("smoke").interleave.enabled and not get_preset("slam").interleave.enabled
    with pytest.raises(ConfigError, match="train.dataset_weights"):
        apply_overrides(smoke, {"train.dataset_weights": {"speech": 1.0}}).resolve()
    with pytest.raises(ConfigError, match="dpo.enabled"):
        apply_overrides(smoke, {"dpo.enabled": True}).resolve()
    assert modalities("cm_tsc_t2s") == ("text", "speech") and modalities("cm_tsc_s2t") == ("speech", "text")
    with pytest.raises(ValueError):
        modalities("cm_tsc_x2s")


def test_plan_of_the_interleaved_preset() -> None:
    from slam_core.plan import build_plan

    plan = build_plan(get_preset("slam_interleaved"), gpu="A5000")
    names = [s["name"] for s in plan["stages"]]
    assert "pre-training" in names and "DPO" not in names


def test_report_puts_cross_modal_rows_in_their_own_section() -> None:
    from slam_core.eval.report import metrics_sections_html

    rows = [{"checkpoint": "c", "metric": "cm_tsc_t2s", "accuracy": 0.6, "n": 10, "ci_low": 0.3, "ci_high": 0.8},
            {"checkpoint": "c", "metric": "cm_tsc_s2s", "accuracy": 0.5, "n": 10, "ci_low": 0.2, "ci_high": 0.8}]
    html = "".join(metrics_sections_html(rows, None))
    assert "Cross-modal StoryCloze" in html and "cm_tsc_t2s" in html and "paper's evaluation sets" not in html
