"""Speech units: tiny 25 Hz encoder, k-means quantiser, batch-invariant extraction, Parquet shards."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import soxr
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from slam_core.audio.io import encode_flac, read_audio  # noqa: E402
from slam_core.config import UnitsConfig  # noqa: E402
from slam_core.schemas import EVAL_PAIRS_AUDIO, EVAL_PAIRS_UNITS, PREFERENCE_AUDIO, PREFERENCE_UNITS, SEGMENTS, UNITS  # noqa: E402
from slam_core.units import (  # noqa: E402
    TINY_ENCODER_LAYER, EncoderNotAvailableError, KmeansError, UnitExtractor, assign_units, build_extractor,
    build_tiny_encoder, convert_kmeans_pickle, dedup_units, extract_audio_dir, extract_pair_units, extract_segment_shard, fit_kmeans,
    fit_kmeans_from_segments, load_centroids, load_encoder, resolve_encoder, save_centroids,
)
from slam_core.units.encoder import frames_for_samples  # noqa: E402
from slam_core.units.quantizer import PUBLISHED_SHA256, verify_centroids_source  # noqa: E402
from shared_data import REAL_SPEECH

WORDS = "apple banana window river mountain yellow garden doctor music paper table orange summer pencil rocket silver".split()


# ---- espeak-ng speech through the library bundled with espeakng-loader (no CLI needed) ------------

_SYNTH_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()
        self.rate_hz = self.lib.espeak_Initialize(2, 0, data_parent, 0)  # 2 = AUDIO_OUTPUT_SYNCHRONOUS
        self.chunks: list[np.ndarray] = []
        self.callback = _SYNTH_CB(self._collect)
        self.lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, wav, n, _events) -> int:
        if n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, text: str, words_per_minute: int, voice: str = "en-us") -> np.ndarray:
        self.lib.espeak_SetVoiceByName(voice.encode())
        self.lib.espeak_SetParameter(1, words_per_minute, 0)  # 1 = espeakRATE
        self.chunks.clear()
        data = text.encode() + b"\0"
        self.lib.espeak_Synth(data, len(data), 0, 0, 0, 1, None, None)  # 1 = espeakCHARS_UTF8
        self.lib.espeak_Synchronize()
        wave = np.concatenate(self.chunks).astype(np.float32) / 32768.0
        return soxr.resample(wave, self.rate_hz, 16000).astype(np.float32)


@pytest.fixture(scope="module")
def espeak() -> _Espeak:
    return _Espeak()


# ---- shared fixtures ------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny-hubert-25hz", seed=0)


@pytest.fixture(scope="module")
def encoder(tiny_dir):
    return load_encoder(str(tiny_dir), "cpu", torch.float32)


@pytest.fixture(scope="module")
def real_waves() -> list[np.ndarray]:
    return [read_audio(REAL_SPEECH / f"audio{i}.flac") for i in (1, 2)]


@pytest.fixture(scope="module")
def extractor(encoder, real_waves) -> UnitExtractor:
    feats = UnitExtractor(encoder, None, TINY_ENCODER_LAYER).features(real_waves)
    centroids = fit_kmeans(np.concatenate(feats), n_units=32, iters=10, seed=0)
    return UnitExtractor(encoder, centroids, TINY_ENCODER_LAYER, batch_size=4)


def _edit_distance(a: np.ndarray, b: np.ndarray) -> float:
    row = np.arange(len(b) + 1)
    for i, x in enumerate(a, 1):
        prev, row = row, row.copy()
        row[0] = i
        for j, y in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (x != y))
    return row[-1] / max(len(a), len(b), 1)


# ---- encoder --------------------------------------------------------------------------------------


def test_tiny_encoder_has_real_25hz_frame_counts(encoder):
    for n in (225_360, 255_120, 640, 1279, 1280, 16_000, 33_333, 480_000):
        assert frames_for_samples(encoder, n) == n // 640, n


def test_tiny_encoder_build_is_deterministic(tmp_path):
    a = build_tiny_encoder(tmp_path / "a", seed=3)
    b = build_tiny_encoder(tmp_path / "b", seed=3)
    c = build_tiny_encoder(tmp_path / "c", seed=4)
    weights = lambda d: (d / "model.safetensors").read_bytes()  # noqa: E731
    assert weights(a) == weights(b) != weights(c)
    assert not list(tmp_path.glob(".*"))  # atomic_dir left no temporaries


def test_load_encoder_missing_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderNotAvailableError, match=r"slam-tests/no-such-encoder.*units\.encoder=/path/to/dir"):
        load_encoder("slam-tests/no-such-encoder")
    with pytest.raises(EncoderNotAvailableError, match="does not exist"):
        load_encoder(str(tmp_path / "missing"))


def test_resolve_encoder_builds_tiny_once(tmp_path):
    cfg = UnitsConfig(encoder="tiny", layer=TINY_ENCODER_LAYER)
    path = Path(resolve_encoder(cfg, tmp_path))
    assert path.parent == tmp_path / "models" and path.name.startswith("tiny-hubert-25hz-")
    assert (path / "config.json").is_file()
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_encoder(cfg, tmp_path) == str(path)
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    assert resolve_encoder(UnitsConfig(encoder="/some/dir"), tmp_path) == "/some/dir"


def test_layer_beyond_encoder_depth_is_rejected(encoder):
    with pytest.raises(ValueError, match="units.layer=11"):
        UnitExtractor(encoder, None, layer=11)


def test_tiny_encoder_units_separate_words(encoder, espeak):
    """Same word at two speaking rates -> similar units; different words -> different units."""
    slow = [espeak.say(w, 150) for w in WORDS]
    fast = [espeak.say(w, 175) for w in WORDS]
    plain = UnitExtractor(encoder, None, TINY_ENCODER_LAYER)
    centroids = fit_kmeans(np.concatenate(plain.features(slow + fast)), n_units=50, iters=20, seed=0)
    ex = UnitExtractor(encoder, centroids, TINY_ENCODER_LAYER)
    us, uf = [u for u, _ in ex.units(slow)], [u for u, _ in ex.units(fast)]
    dist = np.array([[_edit_distance(a, b) for b in uf] for a in us])
    same, different = np.diag(dist).mean(), dist[~np.eye(len(WORDS), dtype=bool)].mean()
    retrieved = (dist.argmin(axis=1) == np.arange(len(WORDS))).mean()
    # Measured over repeated syntheses: gap 0.28-0.32, retrieval 0.69-1.0 (plain random init: ~0.1).
    assert same < different - 0.15, (same, different)
    assert retrieved >= 0.5, retrieved


# ---- quantiser ------------------------------------------------------------------------------------


def test_fit_kmeans_is_seeded_and_float32():
    x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    a, b, c = fit_kmeans(x, 20, 10, seed=1), fit_kmeans(x, 20, 10, seed=1), fit_kmeans(x, 20, 10, seed=2)
    assert a.shape == (20, 16) and a.dtype == np.float32
    assert a.tobytes() == b.tobytes() != c.tobytes()
    with pytest.raises(KmeansError, match="N >= n_units"):
        fit_kmeans(x[:5], 20, 10, seed=1)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_centroids_round_trip(tmp_path, suffix):
    c = np.random.default_rng(1).standard_normal((7, 5)).astype(np.float32)
    path = save_centroids(c, tmp_path / f"km{suffix}")
    assert np.array_equal(load_centroids(path), c)


def test_load_centroids_rejects_pickles_and_bad_arrays(tmp_path):
    with pytest.raises(KmeansError, match="convert_kmeans_pickle"):
        load_centroids(Path(__file__))
    np.save(tmp_path / "bad.npy", np.zeros(5, np.float32))
    with pytest.raises(KmeansError, match=r"bad\.npy.*\(K, D\)"):
        load_centroids(tmp_path / "bad.npy")
    with pytest.raises(KmeansError, match="not found"):
        load_centroids(tmp_path / "none.npy")


def test_faiss_and_torch_assignment_agree():
    rng = np.random.default_rng(2)
    c = rng.standard_normal((50, 24)).astype(np.float32)
    x = np.concatenate([rng.standard_normal((3000, 24)), c[:5]]).astype(np.float32)  # exact hits too
    by_faiss = assign_units(x, c, backend="faiss")
    by_torch = assign_units(torch.from_numpy(x), c, backend="torch")
    dist = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    for ids in (by_faiss, by_torch):  # allow exact ties: the chosen centroid must be a nearest one
        assert np.allclose(dist[np.arange(len(x)), ids], dist.min(1), rtol=1e-5, atol=1e-5)
    assert (by_faiss == by_torch).mean() > 0.999
    assert np.array_equal(by_faiss[-5:], np.arange(5))


class FakeKMeans:
    """Stands in for sklearn's KMeans: the converter only reads cluster_centers_."""

    def __init__(self, centers: np.ndarray) -> None:
        self.cluster_centers_ = centers


def test_convert_kmeans_pickle_refuses_without_opt_in(tmp_path):
    path = tmp_path / "km.bin"
    path.write_bytes(pickle.dumps(FakeKMeans(np.ones((3, 4)))))
    with pytest.raises(KmeansError, match="pass --allow-unpickle"):
        convert_kmeans_pickle(path, tmp_path / "km.npy")
    assert not (tmp_path / "km.npy").exists()


def test_convert_kmeans_pickle_extracts_centroids(tmp_path):
    centers = np.random.default_rng(3).standard_normal((6, 4))  # float64 like sklearn
    path = tmp_path / "km.bin"
    path.write_bytes(pickle.dumps(FakeKMeans(centers)))
    out = convert_kmeans_pickle(path, tmp_path / "km.safetensors", allow_unpickle=True, expected_sha256=None)
    got = load_centroids(out)
    assert got.dtype == np.float32 and np.allclose(got, centers, atol=1e-6)
    record = json.loads((tmp_path / "km.safetensors.source.json").read_text())
    assert record["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and record["published"] is False
    assert record["centroids_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_convert_kmeans_command_needs_the_opt_in(tmp_path, capsys):
    from flows.cli import main

    centers = np.random.default_rng(4).standard_normal((5, 4))
    path = tmp_path / "km.bin"
    path.write_bytes(pickle.dumps(FakeKMeans(centers)))
    out = tmp_path / "km.npy"
    assert main(["units", "convert-kmeans", "--pickle", str(path), "--out", str(out)]) == 2
    assert "refusing to unpickle" in capsys.readouterr().err and not out.exists()
    assert main(["units", "convert-kmeans", "--pickle", str(path), "--out", str(out), "--allow-unpickle"]) == 2
    assert "does not match the published" in capsys.readouterr().err and not out.exists()
    assert main(["units", "convert-kmeans", "--pickle", str(path), "--out", str(out), "--allow-unpickle",
                 "--sha256", "none"]) == 0
    assert np.allclose(load_centroids(out), centers, atol=1e-6) and "5 centroids of dim 4" in capsys.readouterr().out


def test_convert_checks_the_full_sha256_whatever_the_name(tmp_path):
    for name in ("mhubert_base_25hz_cp_mls_cv_sp_fisher_L11_km500.bin", "km500.bin"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(FakeKMeans(np.ones((3, 4)))))
        with pytest.raises(KmeansError, match=r"does not match the published .* sha256 "
                                              r"03cc04a9c24fec4285e73e709c485756d8f116aa8e724eac555de6a7cf8d28ad"):
            convert_kmeans_pickle(path, tmp_path / "km.npy", allow_unpickle=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    same_ends = digest[:8] + ("0" if digest[8] != "0" else "1") + digest[9:]  # differs in the middle only
    with pytest.raises(KmeansError, match="does not match the expected"):
        convert_kmeans_pickle(path, tmp_path / "km.npy", allow_unpickle=True, expected_sha256=same_ends)
    assert not (tmp_path / "km.npy").exists()
    convert_kmeans_pickle(path, tmp_path / "km.npy", allow_unpickle=True, expected_sha256=digest.upper())


def test_verify_centroids_source_checks_origin_and_the_file_in_full(tmp_path):
    path = tmp_path / "km.bin"
    path.write_bytes(pickle.dumps(FakeKMeans(np.arange(12.0).reshape(3, 4))))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = convert_kmeans_pickle(path, tmp_path / "q" / "km.npy", allow_unpickle=True, expected_sha256=None)
    verify_centroids_source(out, digest)
    with pytest.raises(KmeansError, match="converted from a pickle with sha256 .* expected 03cc04a9.*convert-kmeans"):
        verify_centroids_source(out, PUBLISHED_SHA256)
    save_centroids(np.arange(12.0).reshape(3, 4) + 1e-3, out)  # swapped after conversion
    with pytest.raises(KmeansError, match="the file changed since"):
        verify_centroids_source(out, digest)
    (tmp_path / "q" / "km.npy.source.json").unlink()
    with pytest.raises(KmeansError, match="no readable source record"):
        verify_centroids_source(out, digest)
    with pytest.raises(KmeansError, match="centroid file not found .* `slam units convert-kmeans"):
        verify_centroids_source(tmp_path / "missing.npy", digest)


def test_convert_sklearn_pickle_without_sklearn_names_the_module(tmp_path):
    try:
        import sklearn  # noqa: F401
        pytest.skip("scikit-learn is installed")
    except ImportError:
        pass
    path = tmp_path / "km.bin"
    path.write_bytes(b"csklearn.cluster._kmeans\nKMeans\n)\x81.")  # GLOBAL, EMPTY_TUPLE, NEWOBJ, STOP
    with pytest.raises(KmeansError, match="pip install scikit-learn joblib"):
        convert_kmeans_pickle(path, tmp_path / "km.npy", allow_unpickle=True, expected_sha256=None)


# ---- extraction -----------------------------------------------------------------------------------


def test_dedup_units_run_lengths():
    units, durations = dedup_units(np.array([3, 3, 7, 7, 7, 3, 9]))
    assert units.tolist() == [3, 7, 3, 9] and durations.tolist() == [2, 3, 1, 1]
    assert units.dtype == durations.dtype == np.uint16
    units, durations = dedup_units(np.full(65535 * 2 + 5, 4))
    assert units.tolist() == [4, 4, 4] and durations.tolist() == [65535, 65535, 5]
    assert [len(a) for a in dedup_units(np.zeros(0, np.int64))] == [0, 0]


def test_batched_extraction_equals_one_at_a_time(extractor, real_waves):
    rng = np.random.default_rng(4)
    a, b = real_waves
    waves = [a, b[:40_000], a[1000:41_000], b, a[5:20_000], b[7:47_007], a[:40_000], b[:639], a[3:19_998]]
    waves.append(waves[0] + 0.01 * rng.standard_normal(len(a)).astype(np.float32))  # same length as waves[0]
    single = [extractor.frames([w])[0] for w in waves]
    for batch_size in (2, 3, 16):
        batched = extractor.frames(waves, batch_size=batch_size)
        assert all(np.array_equal(s, t) for s, t in zip(single, batched)), batch_size
    assert [len(f) for f in single] == [len(w) // 640 for w in waves]
    feats_single = [extractor.features([w])[0] for w in waves[:4]]
    assert all(np.array_equal(s, t) for s, t in zip(feats_single, extractor.features(waves[:4], batch_size=4)))


def test_units_are_deduplicated_frames(extractor, real_waves):
    (units, durations), = extractor.units([real_waves[0]])
    frames = extractor.frames([real_waves[0]])[0]
    assert np.array_equal(np.repeat(units, durations), frames)
    assert (units[1:] != units[:-1]).all() and int(durations.sum()) == 352


def _write_segments(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=SEGMENTS), path)
    return path


def _segment(seg_id: str, src: Path, start_s: float, end_s: float) -> dict:
    return {"segment_id": seg_id, "dataset": "demo", "split": "train", "source_path": str(src),
            "start_s": start_s, "end_s": end_s, "speaker": "s1", "text": None}


def test_extract_segment_shard_writes_units_and_skips_bad(extractor, tmp_path):
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC not really")
    src = REAL_SPEECH / "audio1.flac"
    segments = _write_segments(tmp_path / "segments.parquet", [
        _segment("s0", src, 0.0, 5.0), _segment("bad", corrupt, 0.0, 1.0),
        _segment("s1", src, 5.0, 14.0), _segment("short", src, 1.0, 1.02), _segment("s2", src, 2.5, 7.5),
    ])
    out = tmp_path / "units" / "units-00000.parquet"
    summary = extract_segment_shard(segments, out, extractor, batch_size=4)
    table = pq.read_table(out)
    assert table.schema.equals(UNITS) and table["segment_id"].to_pylist() == ["s0", "s1", "s2"]
    assert summary["rows"] == 3 and [(b[0], b[1]) for b in summary["bad"]] == [("bad", "unreadable"), ("short", "too_short")]
    expected = extractor.units([read_audio(src, 0.0, 5.0), read_audio(src, 5.0, 14.0), read_audio(src, 2.5, 7.5)])
    for row, (units, durations) in zip(table.to_pylist(), expected):
        assert row["units"] == units.tolist() and row["durations"] == durations.tolist()
        assert row["n_frames"] == sum(row["durations"]) == int(row["audio_seconds"] * 16000) // 640
    assert summary["tokens"] == sum(len(u) for u, _ in expected)
    assert summary["audio_seconds"] == pytest.approx(19.0, abs=1e-3)
    again = extract_segment_shard(segments, tmp_path / "again.parquet", extractor, batch_size=1)
    assert (tmp_path / "again.parquet").read_bytes() == out.read_bytes() and again["rows"] == 3


def test_extract_pair_units_both_kinds(extractor, real_waves, tmp_path):
    a, b = real_waves
    flac = lambda w: encode_flac(w)  # noqa: E731
    pairs = pa.Table.from_pylist([
        {"pair_id": "p0", "set": "tsc", "speaker": "x", "positive_text": "", "negative_text": "",
         "positive_audio": flac(a[:32_000]), "negative_audio": flac(b[:48_000])},
        {"pair_id": "p1", "set": "tsc", "speaker": "x", "positive_text": "", "negative_text": "",
         "positive_audio": b"garbage", "negative_audio": flac(b[:16_000])},
    ], schema=EVAL_PAIRS_AUDIO)
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    summary = extract_pair_units(tmp_path / "pairs.parquet", tmp_path / "pairs_units.parquet", extractor, 4)
    out = pq.read_table(tmp_path / "pairs_units.parquet")
    assert out.schema.equals(EVAL_PAIRS_UNITS) and out["pair_id"].to_pylist() == ["p0"] and out["set"][0].as_py() == "tsc"
    assert summary["kind"] == "eval_pairs" and summary["bad"][0][:2] == ("p1/positive", "unreadable")
    (u, d), = extractor.units([read_audio_bytes_roundtrip(a[:32_000])])
    assert out["positive_units"][0].as_py() == u.tolist() and out["positive_durations"][0].as_py() == d.tolist()

    prefs = pa.Table.from_pylist([
        {"pair_id": "q0", "speaker": "x", "prompt_text": "", "chosen_text": "", "rejected_text": "",
         "prompt_audio": flac(a[:24_000]), "chosen_audio": flac(b[:20_000]), "rejected_audio": flac(a[-20_000:])},
    ], schema=PREFERENCE_AUDIO)
    pq.write_table(prefs, tmp_path / "prefs.parquet")
    summary = extract_pair_units(tmp_path / "prefs.parquet", tmp_path / "prefs_units.parquet", extractor, 4)
    out = pq.read_table(tmp_path / "prefs_units.parquet")
    assert out.schema.equals(PREFERENCE_UNITS) and summary == {**summary, "kind": "preferences", "rows": 1, "bad": []}
    (u, _), = extractor.units([read_audio_bytes_roundtrip(a[-20_000:])])
    assert out["rejected_units"][0].as_py() == u.tolist()


def read_audio_bytes_roundtrip(wave: np.ndarray) -> np.ndarray:
    from slam_core.audio.io import decode_audio_bytes

    return decode_audio_bytes(encode_flac(wave))


def test_extract_audio_dir_shards_with_relative_ids(extractor, real_waves, tmp_path):
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    sf.write(audio / "a.wav", real_waves[0][:32_000], 16000)
    sf.write(audio / "sub" / "b.flac", real_waves[1][:40_000], 16000)
    sf.write(audio / "sub" / "c.wav", real_waves[1][:20_000], 16000)
    summaries = extract_audio_dir(audio, tmp_path / "out", extractor, batch_size=2, shard_files=2)
    assert [s["rows"] for s in summaries] == [2, 1]
    ids = pq.read_table(tmp_path / "out")["segment_id"].to_pylist()
    assert ids == ["a.wav", "sub/b.flac", "sub/c.wav"]
    with pytest.raises(FileNotFoundError, match="no audio files"):
        extract_audio_dir(tmp_path / "out", tmp_path / "o2", extractor)


def test_fit_kmeans_from_segments_is_seeded(encoder, tmp_path):
    src = REAL_SPEECH / "audio2.flac"
    segments = _write_segments(tmp_path / "seg.parquet", [_segment(f"s{i}", src, 2.0 * i, 2.0 * i + 3.0) for i in range(6)])
    cfg = UnitsConfig(encoder="tiny", layer=TINY_ENCODER_LAYER, n_units=8, kmeans_sample_frames=200, kmeans_iters=5)
    plain = UnitExtractor(encoder, None, TINY_ENCODER_LAYER, batch_size=2)
    a = fit_kmeans_from_segments([segments], plain, cfg, seed=5, out_path=tmp_path / "a.npy")
    b = fit_kmeans_from_segments([segments], plain, cfg, seed=5, out_path=tmp_path / "b.npy")
    c = fit_kmeans_from_segments([segments], plain, cfg, seed=6, out_path=tmp_path / "c.npy")
    assert load_centroids(a).shape == (8, encoder.config.hidden_size)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


@pytest.mark.parametrize("batching", ["invariant", "padded"])
@pytest.mark.parametrize("stable_layer_norm", [False, True])
def test_layer_features_equal_hubert_forward(stable_layer_norm, batching, real_waves):
    from transformers import HubertModel

    from slam_core.units.encoder import tiny_encoder_config

    torch.manual_seed(0)
    cfg = tiny_encoder_config(num_layers=3)
    cfg.do_stable_layer_norm, cfg.feat_extract_norm = stable_layer_norm, "layer" if stable_layer_norm else "group"
    model = HubertModel(cfg).eval()
    wave = real_waves[0][:48_000]
    with torch.no_grad():
        reference = model(torch.nn.functional.pad(torch.from_numpy(wave)[None], (40, 40)), output_hidden_states=True)
    for layer in range(4):
        got = UnitExtractor(model, None, layer, batching=batching).features([wave])[0]
        assert np.allclose(got, reference.hidden_states[layer][0].numpy(), atol=1e-5), layer


def test_build_extractor_from_config(tmp_path, extractor):
    centroids = save_centroids(extractor.centroids, tmp_path / "km.npy")
    cfg = UnitsConfig(encoder="tiny", layer=TINY_ENCODER_LAYER, n_units=32, batch_size=3, dedup=False)
    built = build_extractor(cfg, tmp_path, centroids=centroids, device="cpu")
    assert len(list((tmp_path / "models").glob("tiny-hubert-25hz-*/config.json"))) == 1
    assert built.layer == TINY_ENCODER_LAYER and built.batch_size == 3 and built.n_units == 32 and not built.dedup
    with pytest.raises(ValueError, match="units.layer=11 but the encoder has 2 layers"):
        build_extractor(UnitsConfig(encoder="tiny", layer=11), tmp_path, device="cpu")


def test_padded_batching_matches_masked_hubert_forward_and_mostly_single_units(extractor, real_waves):
    padded = UnitExtractor(extractor.encoder, extractor.centroids, TINY_ENCODER_LAYER, batch_size=4, batching="padded")
    a, b = real_waves
    waves = [a, b[:40_000], a[1000:41_000 + 999], b, a[5:20_000], b[7:47_007]]
    plan = padded.batch_plan([padded.n_frames(len(w)) for w in waves])
    assert [len(p) for p in plan] == [4, 2]  # full batches, longest first
    # Independent reference: HubertModel.forward on the zero-padded batch with an attention mask (the tiny
    # encoder's per-frame conv norm makes its conv output independent of padding).
    batch = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(w) for w in waves], batch_first=True)
    lengths = torch.tensor([len(w) for w in waves])
    sample_mask = (torch.arange(batch.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        ref = extractor.encoder(torch.nn.functional.pad(batch, (40, 40)), torch.nn.functional.pad(sample_mask, (40, 40), value=1),
                                output_hidden_states=True).hidden_states[TINY_ENCODER_LAYER]
    for i, feat in enumerate(padded.features(waves)):
        assert feat.shape[0] == len(waves[i]) // 640
        assert np.allclose(feat, ref[i, : feat.shape[0]].numpy(), atol=1e-4), i
    single = np.concatenate([extractor.frames([w])[0] for w in waves])
    agreement = float((np.concatenate(padded.frames(waves)) == single).mean())
    assert agreement >= 0.99, agreement


def test_unknown_batching_mode_is_rejected(encoder):
    with pytest.raises(ValueError, match="units.batching='sorted'"):
        UnitExtractor(encoder, None, TINY_ENCODER_LAYER, batching="sorted")
