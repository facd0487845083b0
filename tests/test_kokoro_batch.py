"""Batched Kokoro: the masked forward against the stock KModel, batches against lone utterances, and the
backend's batch API (length batching, bad requests, a failing batch)."""

from __future__ import annotations

import os
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from slam_core.config import SynthConfig
from slam_core.synth import TTSError, get_backend
from slam_core.synth.kokoro_batch import KokoroItem, forward_batch
from slam_core.synth.kokoro_tts import _length_batches
from slam_core.synth.shards import speak_many_16k
from test_synth import _tiny_kokoro_dir, one_torch_thread  # noqa: F401  (fixture)

pytest.importorskip("kokoro")

TEXTS = ["The little fish swam to the coral reef and found a shiny shell.", "Quick zebras vex the jumping dog, oh!",
         "The dog."]
SPEED = 20.0  # random duration predictions are long; a high speed keeps the audio short


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model_dir = _tiny_kokoro_dir(tmp_path_factory.mktemp("kokoro"), voices=("af_test", "bm_test"))
    torch.manual_seed(0)
    from kokoro.model import KModel
    from misaki.espeak import EspeakG2P

    model = KModel(repo_id="hexgrad/Kokoro-82M", config=str(model_dir / "config.json"),
                   model=str(model_dir / "kokoro-v1_0.pth")).eval()
    return model_dir, model, EspeakG2P(language="en-us")


def _phonemes(model, g2p, text: str) -> str:
    return "".join(c for c in g2p(text)[0] if c in model.vocab)


def _item(model, g2p, text: str, voice_pack: torch.Tensor) -> KokoroItem:
    ps = _phonemes(model, g2p, text)
    return KokoroItem([0, *(model.vocab[c] for c in ps), 0], voice_pack[len(ps) - 1], zlib.crc32(text.encode()))


def test_one_item_is_the_stock_forward_bit_for_bit(tiny, one_torch_thread):  # noqa: F811
    model_dir, model, g2p = tiny
    pack = torch.load(model_dir / "voices" / "af_test.pt", weights_only=True).float()
    for text in TEXTS[1:]:
        item = _item(model, g2p, text, pack)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item.seed)
            stock = model(_phonemes(model, g2p, text), item.ref_s, SPEED, return_output=True)
        audio, durations = forward_batch(model, [item], SPEED)[0]
        assert torch.equal(durations, stock.pred_dur)
        assert torch.equal(audio, stock.audio)  # same modules, same order, same noise draws


def test_batched_items_match_lone_items(tiny, one_torch_thread):  # noqa: F811
    model_dir, model, g2p = tiny
    packs = [torch.load(model_dir / "voices" / f"{v}.pt", weights_only=True).float() for v in ("af_test", "bm_test")]
    items = [_item(model, g2p, text, packs[k % 2]) for k, text in enumerate(TEXTS)]
    lone = [forward_batch(model, [item], SPEED)[0] for item in items]
    together = forward_batch(model, list(reversed(items)), SPEED)[::-1]
    assert len({len(a) for a, _ in lone}) == 3  # really different lengths: padding is exercised
    for (a, d), (b, e) in zip(lone, together):
        assert torch.equal(d, e) and a.shape == b.shape
        assert float((a - b).abs().max()) < 1e-4 * float(a.abs().max())
    assert torch.equal(together[0][0], forward_batch(model, list(reversed(items)), SPEED)[::-1][0][0])


def test_length_batches_respect_size_and_token_budget():
    lengths = [5, 50, 6, 7, 49, 300]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches = _length_batches(order, lengths, batch_size=2, max_tokens=100)
    assert batches == [[0, 2], [3, 4], [1], [5]]  # 2 x 49 fits in 100 tokens; 300 goes alone
    assert _length_batches(order, lengths, batch_size=8, max_tokens=10_000) == [order]
    for batch in _length_batches(order, lengths, batch_size=3, max_tokens=120):
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 120


def test_backend_batch_api_equals_one_at_a_time_and_isolates_bad_requests(tiny, tmp_path, one_torch_thread):  # noqa: F811
    model_dir = tiny[0]
    cfg = SynthConfig(backend="kokoro", kokoro_model=str(model_dir), kokoro_speed=SPEED, device="cpu",
                      voices=["af_test"])
    torch.manual_seed(0)  # the empty state dict leaves random weights: the same seed gives the same ones
    batched = get_backend(cfg.model_copy(update={"kokoro_batch_size": 8}))
    torch.manual_seed(0)
    alone = get_backend(cfg.model_copy(update={"kokoro_batch_size": 1}))
    requests = [(TEXTS[0] + " " + TEXTS[2], "af_test"), ("  ?! ", "af_test"), (TEXTS[1], "bm_test")]
    calls: list[int] = []
    speak_parts = batched._speak_parts
    batched._speak_parts = lambda parts: calls.append(len(parts)) or speak_parts(parts)
    results = batched.synthesize_aligned_batch(requests)
    assert calls == [3]  # three sentences, one call
    assert isinstance(results[1], TTSError) and results[1].reason == "empty_text"
    for (text, voice), result in zip(requests, results):
        if isinstance(result, TTSError):
            continue
        wave, words = result
        ref_wave, ref_words = alone.synthesize_aligned(text, voice)
        assert [w for w, _, _ in words] == [w for w, _, _ in ref_words] == text.split()
        assert np.allclose([t for _, a, b in words for t in (a, b)], [t for _, a, b in ref_words for t in (a, b)])
        assert wave.shape == ref_wave.shape and np.abs(wave - ref_wave).max() < 1e-4 * np.abs(ref_wave).max()
    resampled = speak_many_16k(batched, requests, 16_000, aligned=True)
    assert isinstance(resampled[1], TTSError)
    assert abs(len(resampled[0][0]) - len(results[0][0]) * 2 / 3) <= 1


def test_a_failing_batch_is_retried_alone_so_only_the_bad_request_fails(tiny, monkeypatch, one_torch_thread):  # noqa: F811
    from slam_core.synth import kokoro_tts

    backend = get_backend(SynthConfig(backend="kokoro", kokoro_model=str(tiny[0]), kokoro_speed=SPEED, device="cpu",
                                      voices=["af_test"], kokoro_batch_size=8))
    real = kokoro_tts.forward_batch

    def flaky(model, items, speed, autocast_dtype=None):
        if any(len(it.input_ids) < 12 for it in items):  # "The dog." is the only short one
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(model, items, speed, autocast_dtype)

    monkeypatch.setattr(kokoro_tts, "forward_batch", flaky)
    results = backend.synthesize_aligned_batch([(TEXTS[1], "af_test"), (TEXTS[2], "af_test"), (TEXTS[0], "af_test")])
    assert isinstance(results[1], TTSError) and results[1].reason == "synth_failed" and "out of memory" in str(results[1])
    assert not isinstance(results[0], TTSError) and not isinstance(results[2], TTSError)


def test_kmodel_imports_without_the_g2p_stack():
    """The GPU bench loads KModel on hosts without misaki/spaCy (they come in through kokoro's __init__)."""
    import subprocess
    import sys
    from pathlib import Path

    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('misaki', 'spacy'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
from bench.synth_gpu import import_kmodel
KModel = import_kmodel()
assert KModel.__name__ == 'KModel' and 'misaki' not in sys.modules
print('ok')
"""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_g2p_worker_processes_give_the_same_audio_bytes(tiny, one_torch_thread):  # noqa: F811
    """The CPU step (G2P) in 1 or 2 spawned worker processes, and the stream that plans later calls while the model
    speaks, give the bytes of the in-process path; bad requests are isolated the same way."""
    cfg = SynthConfig(backend="kokoro", kokoro_model=str(tiny[0]), kokoro_speed=SPEED, device="cpu",
                      voices=["af_test"], kokoro_batch_size=8)
    calls = [[(TEXTS[0] + " " + TEXTS[2], "af_test"), ("  ?! ", "af_test"), (TEXTS[1], "bm_test")],
             [(TEXTS[2], "bm_test"), ("%%%", "af_test"), (TEXTS[1] + " " + TEXTS[0], "af_test")]]

    def run(workers: int) -> list[list]:
        torch.manual_seed(0)  # the same random weights in every backend
        backend = get_backend(cfg.model_copy(update={"kokoro_g2p_workers": workers}))
        try:
            assert backend.g2p.workers == workers
            first = backend.synthesize_aligned_batch(calls[0])
            streamed = list(backend.synthesize_aligned_stream(calls, lookahead=1))
            assert backend.stream_stats["calls"] == 2 and backend.stream_stats["g2p_wait_s"] >= 0
            return [first, *streamed]
        finally:
            backend.close()

    def as_bytes(results: list) -> list:
        return [(r.reason,) if isinstance(r, TTSError) else (r[0].tobytes(), r[1]) for r in results]

    reference = [as_bytes(r) for r in run(0)]
    assert reference[0] == reference[1]  # a lone call and the same call in a stream
    assert reference[0][1] == ("empty_text",) and reference[2][1] == ("empty_text",)
    assert all(len(r) == 2 for r in reference[2][::2])  # the good requests of the second call were spoken
    for workers in (1, 2):
        assert [as_bytes(r) for r in run(workers)] == reference, f"{workers} G2P workers"


def test_a_bad_voice_fails_its_own_call_in_a_stream(tiny, one_torch_thread):  # noqa: F811
    from slam_core.synth import TTSSetupError

    backend = get_backend(SynthConfig(backend="kokoro", kokoro_model=str(tiny[0]), kokoro_speed=SPEED, device="cpu",
                                      voices=["af_test"], kokoro_g2p_workers=0))
    stream = backend.synthesize_aligned_stream([[(TEXTS[2], "af_test")], [(TEXTS[2], "af_missing")]], lookahead=2)
    assert not isinstance(next(stream)[0], TTSError)  # the first call is spoken though the second's voice is bad
    with pytest.raises(TTSSetupError, match="af_missing"):
        next(stream)


def test_auto_g2p_workers():
    from slam_core.synth.kokoro_g2p import auto_g2p_workers

    assert auto_g2p_workers("cpu") == 0
    cores = os.cpu_count() or 1
    assert auto_g2p_workers("cuda") == (min(8, cores) if cores >= 2 else 0)
    assert auto_g2p_workers("cuda", synth_workers=cores) == 0


def test_slam_synth_g2p_workers_option_sets_the_config(tmp_path):
    import argparse

    from flows.cli_synth import add_synth_parser, synth_config

    parser = argparse.ArgumentParser()
    add_synth_parser(parser.add_subparsers())
    args = parser.parse_args(["synth", "stinystories", "--input", "x", "--g2p-workers", "3",
                              "--data-root", str(tmp_path)])
    args.preset_backend = "espeak"
    cfg, _ = synth_config(args)
    assert cfg.synth.kokoro_g2p_workers == 3
    args = parser.parse_args(["synth", "stinystories", "--input", "x", "--data-root", str(tmp_path)])
    args.preset_backend = "espeak"
    assert synth_config(args)[0].synth.kokoro_g2p_workers is None  # auto
