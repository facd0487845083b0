"""Bad data never becomes invalid output and never takes good neighbours down: huge float samples are refused
before and after resampling, unit ids are checked against the vocabulary before a shard is written, same-stem
files keep their own segments, an unreadable optional SWAG split leaves the train split alone."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv  # noqa: F401 - pa.csv
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from slam_core.audio.io import BadAudioError, read_audio, to_mono_16k
from slam_core.corpora import text_hub
from slam_core.errors import InputError
from slam_core.units.encoder import TINY_ENCODER_LAYER, build_tiny_encoder, load_encoder
from slam_core.units.extract import UnitExtractor, extract_items
from slam_core.units.shards import extract_audio_dir
from slam_core.units.quantizer import fit_kmeans
from slam_core.units.validate import InvalidUnitsError, check_unit_table, item_units_problem

SR = 16_000
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tone(seconds: float = 1.0, rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _huge(n: int) -> np.ndarray:
    return np.where(np.arange(n) % 2 == 0, 3e38, -3e38).astype(np.float32)


@pytest.mark.parametrize("rate", [SR, 8000, 44_100])
def test_huge_float_samples_are_refused_at_any_rate(tmp_path, rate):
    path = tmp_path / "huge.wav"
    sf.write(path, _huge(rate), rate, subtype="FLOAT")
    with pytest.raises(BadAudioError) as info:
        read_audio(path)
    assert info.value.reason in {"out_of_range", "non_finite"}


def test_int_scaled_float_wav_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "int-scaled.wav"  # float samples written on the int16 scale
    sf.write(path, (np.sin(np.arange(SR) / 10.0) * 30_000).astype(np.float32), SR, subtype="FLOAT")
    with pytest.raises(BadAudioError) as info:
        read_audio(path)
    assert info.value.reason == "out_of_range" and "divide by 32768" in info.value.detail
    assert str(path) in str(info.value)


def test_stereo_mean_overflow_and_resampler_output_are_checked():
    stereo = np.stack([_huge(SR), _huge(SR)], axis=1)
    with pytest.raises(BadAudioError):
        to_mono_16k(stereo, SR)
    loud_but_fine = 2.0 * _tone(rate=8000)  # clipped float audio is still audio
    assert np.isfinite(to_mono_16k(loud_but_fine, 8000)).all()


@pytest.fixture(scope="module")
def extractor(tmp_path_factory) -> UnitExtractor:
    encoder = load_encoder(str(build_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny", seed=0)), "cpu",
                           torch.float32)
    waves = [_tone(3.0), 0.5 * _tone(2.0)[::-1].copy()]
    feats = UnitExtractor(encoder, None, TINY_ENCODER_LAYER).features(waves)
    centroids = fit_kmeans(np.concatenate(feats), n_units=8, iters=5, seed=0)
    return UnitExtractor(encoder, centroids, TINY_ENCODER_LAYER, batch_size=4)


def test_huge_audio_in_a_folder_is_quarantined_and_every_unit_is_in_vocabulary(tmp_path, extractor):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "good.wav", _tone(2.0), SR)
    sf.write(audio / "huge.wav", _huge(2 * SR), SR, subtype="FLOAT")
    sf.write(audio / "huge8k.wav", _huge(16_000), 8000, subtype="FLOAT")
    [summary] = extract_audio_dir(audio, tmp_path / "out", extractor, batch_size=4)
    rows = pq.read_table(summary["path"]).to_pylist()
    assert [r["segment_id"] for r in rows] == ["good.wav"]
    assert all(0 <= u < extractor.n_units for r in rows for u in r["units"])
    assert {b[0]: b[1] for b in summary["bad"]} == {"huge.wav": "out_of_range", "huge8k.wav": "out_of_range"}


def test_nan_features_become_a_quarantined_item_not_unit_65535(extractor, monkeypatch):
    wave = _tone(1.0)
    real_frames = extractor.frames

    def nan_for_second(waves, batch_size=None):  # as if the encoder overflowed on the second item
        out = real_frames(waves, batch_size)
        return [f if i != 1 else np.full_like(f, -1) for i, f in enumerate(out)]

    monkeypatch.setattr(extractor, "frames", nan_for_second)
    results, bad = extract_items([("a", lambda: wave), ("b", lambda: wave.copy())], extractor, 4)
    assert list(results) == ["a"] and bad[0][:2] == ("b", "invalid_units")


def test_a_shard_with_out_of_vocabulary_units_is_never_written():
    ok = pa.table({"units": pa.array([[0, 3]], pa.list_(pa.uint16())), "durations": pa.array([[1, 2]], pa.list_(pa.uint16()))})
    check_unit_table(ok, 4, "ok.parquet")
    bad = pa.table({"units": pa.array([[0, 65535]], pa.list_(pa.uint16()))})
    with pytest.raises(InvalidUnitsError, match=r"outside \[0, 500\)"):
        check_unit_table(bad, 500, "bad.parquet")
    zero = pa.table({"positive_durations": pa.array([[1, 0]], pa.list_(pa.uint16()))})
    with pytest.raises(InvalidUnitsError, match="duration of 0"):
        check_unit_table(zero, 500, "zero.parquet")
    assert item_units_problem(np.array([-1, 2]), np.array([1, 1]), 4)
    assert item_units_problem(np.array([1, 2]), np.array([1, 1]), 4) is None


def test_same_stem_files_in_one_folder_each_keep_their_segments(tmp_path):
    from slam_core.audio.vad import segment_audio_files
    from slam_core.config import VadConfig

    spk = tmp_path / "spk"
    spk.mkdir()
    speechy = np.concatenate([np.zeros(SR // 2, np.float32), _tone(2.0), np.zeros(SR // 2, np.float32)])
    sf.write(spk / "x.wav", speechy, SR)
    sf.write(spk / "x.flac", speechy, SR)
    out = segment_audio_files([spk / "x.flac", spk / "x.wav"], VadConfig(threshold=0.01, min_speech_s=0.1),
                              tmp_path / "seg.parquet", "local", "train")
    rows = pq.read_table(out["path"]).to_pylist()
    ids = {r["segment_id"] for r in rows}
    assert len(ids) == len(rows)
    # whatever VAD finds in a tone, both files are treated alike and neither id collides with the other
    by_file = {r["source_path"] for r in rows} | {b[0] for b in out["bad"]}
    assert by_file == {str(spk / "x.flac"), str(spk / "x.wav")}


def _swag_row(i: int, label: object = 1) -> dict:
    return {"video-id": f"v{i}", "fold-ind": str(i), "startphrase": "x", "sent1": f"A boy runs onto field {i}.",
            "sent2": "The boy", "gold-source": "gold", "ending0": f"walks away slowly {i}.",
            "ending1": f"picks up the ball {i}.", "ending2": f"sings a song {i}.", "ending3": f"falls asleep {i}.",
            "label": label}


@pytest.mark.parametrize("validation", ["empty", "latin1", "missing_column", "random"])
def test_bad_validation_file_leaves_the_train_split(tmp_path, validation):
    root = tmp_path / "swag"
    root.mkdir()
    pa.csv.write_csv(pa.Table.from_pylist([_swag_row(i) for i in range(4)]), root / "train.csv")
    val = root / "val.csv"
    if validation == "empty":
        val.write_bytes(b"")
    elif validation == "latin1":
        text = "sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label\nCaf\xe9 a,b,gold,c,d,e,f,1\n"
        val.write_bytes(text.encode("latin-1"))
    elif validation == "missing_column":
        pa.csv.write_csv(pa.Table.from_pylist([{k: v for k, v in _swag_row(0).items() if k != "ending3"}]), val)
    else:
        val.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    out = text_hub.prepare_swag(root, tmp_path / "triples.parquet", seed=0)
    assert out["per_split"] == {"train": 4} and list(out["unreadable"]) == [str(val)]
    assert pq.read_table(out["path"]).num_rows == 4


def test_bad_train_file_is_one_clear_error(tmp_path):
    root = tmp_path / "swag"
    root.mkdir()
    (root / "train.csv").write_bytes(b"")
    with pytest.raises(InputError, match="unreadable SWAG train file"):
        text_hub.prepare_swag(root, tmp_path / "triples.parquet", seed=0)


def test_non_numeric_labels_are_dropped_and_counted():
    rows = [_swag_row(0, "abc"), _swag_row(1, "2"), _swag_row(2, 2.0), _swag_row(3, 7), _swag_row(4, None),
            _swag_row(5, "1.5")]
    triples, dropped = text_hub.build_swag_triples(rows, "train", seed=0)
    assert [t["pair_id"] for t in triples] == ["swag-train-000001", "swag-train-000002"]
    assert dropped == {"bad_label_or_text": 4}


def test_unreadable_tinystories_validation_file_leaves_the_train_split(tmp_path):
    root = tmp_path / "ts"
    root.mkdir()
    pq.write_table(pa.table({"text": ["Tom had a ball. He threw it high.", "Sue saw a cat. The cat ran."]}),
                   root / "train-00000.parquet")
    pq.write_table(pa.table({"story": ["no text column here. Really."]}), root / "validation-00000.parquet")
    out = text_hub.prepare_tinystories(root, tmp_path / "stories.parquet")
    assert out["per_split"] == {"train": 2} and list(out["unreadable"]) == [str(root / "validation-00000.parquet")]
    (root / "train-00000.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="unreadable TinyStories train file"):
        text_hub.prepare_tinystories(root, tmp_path / "stories2.parquet")


def test_data_prepare_with_a_missing_local_dir_is_refused_before_any_flow(tmp_path, capsys):
    from flows.cli import main

    rc = main(["data", "prepare", "librispeech", "--local-dir", str(tmp_path / "nowhere"),
               "--data-root", str(tmp_path / "root")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("slam: error:") == 1 and "Traceback" not in err and "--local-dir" in err
