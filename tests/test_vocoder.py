"""Unit HiFi-GAN vocoder: published key layout (legacy weight-norm g/v), durations, lengths, errors."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from slam_core.eval.vocoder import (
    CHECKPOINT_URL, UnitHifiGan, VocoderNotFoundError, load_vocoder, remove_weight_norm, resolve_vocoder_files,
    vocode, write_wav_16k,
)

TINY_CFG = {
    "resblock": "1", "num_embeddings": 20, "embedding_dim": 8, "model_in_dim": 8,
    "upsample_rates": [4, 2], "upsample_kernel_sizes": [8, 4], "upsample_initial_channel": 16,
    "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "dur_predictor_params": {"encoder_embed_dim": 8, "var_pred_hidden_dim": 8, "var_pred_kernel_size": 3,
                             "var_pred_dropout": 0.5},
    "sampling_rate": 16000,
}
SAMPLES_PER_FRAME = 4 * 2
# the published checkpoint was written by the legacy weight_norm; the test uses it on purpose
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")


def _reference_and_legacy_state(seed: int = 0) -> tuple[UnitHifiGan, dict[str, torch.Tensor]]:
    """A random generator with plain weights, and its state dict in the published layout: every HiFi-GAN conv
    wrapped by torch's legacy weight_norm (keys weight_g / weight_v), the duration predictor left plain."""
    torch.manual_seed(seed)
    reference = remove_weight_norm(UnitHifiGan(TINY_CFG)).eval()
    legacy = remove_weight_norm(UnitHifiGan(TINY_CFG))
    legacy.load_state_dict(reference.state_dict())
    for name, module in legacy.named_modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and not name.startswith("dur_predictor"):
            torch.nn.utils.weight_norm(module)
    return reference, {k: v.clone() for k, v in legacy.state_dict().items()}


def _save(tmp_path: Path, state: dict, cfg: dict = TINY_CFG, extra: dict | None = None) -> tuple[Path, Path]:
    ckpt, cfg_path = tmp_path / "generator.pt", tmp_path / "config.json"
    torch.save({"generator": state, **(extra or {})}, ckpt)
    cfg_path.write_text(json.dumps(cfg))
    return ckpt, cfg_path


def _textlesslib_key_names(cfg: dict) -> set[str]:
    """Key names of textlesslib's CodeGenerator state dict (weight-normed convs as g/v + bias), from its layout."""
    wn = ("weight_g", "weight_v", "bias")
    keys = {f"{m}.{p}" for m in ("conv_pre", "conv_post") for p in wn}
    keys |= {f"ups.{i}.{p}" for i in range(len(cfg["upsample_rates"])) for p in wn}
    n_blocks = len(cfg["upsample_rates"]) * len(cfg["resblock_kernel_sizes"])
    keys |= {f"resblocks.{b}.{c}.{j}.{p}" for b in range(n_blocks) for c in ("convs1", "convs2") for j in range(3)
             for p in wn}
    keys |= {"dict.weight"} | {f"dur_predictor.{m}.{p}" for m in ("conv1.0", "conv2.0", "ln1", "ln2", "proj")
                               for p in ("weight", "bias")}
    return keys


def test_published_key_layout_loads_and_matches_reference(tmp_path: Path) -> None:
    reference, state = _reference_and_legacy_state()
    assert set(state) == _textlesslib_key_names(TINY_CFG)
    assert state["ups.0.weight_g"].shape == (16, 1, 1) and state["ups.0.weight_v"].shape == (16, 8, 8)
    assert state["conv_pre.weight_v"].shape == (16, 8, 7) and state["conv_post.weight_v"].shape == (1, 4, 7)
    vocoder = load_vocoder(*_save(tmp_path, state))
    assert not any("parametrizations" in k for k in vocoder.model.state_dict())

    units = np.array([3, 7, 1, 12, 5, 19, 0], dtype=np.int64)
    wave = vocode(vocoder, units)
    with torch.no_grad():
        ids = torch.as_tensor(units)
        durations = reference.predict_durations(ids)
        expected = reference(ids, durations).numpy()
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert wave.shape[0] == int(durations.sum()) * SAMPLES_PER_FRAME
    np.testing.assert_allclose(wave, expected, atol=1e-5)
    assert np.abs(wave).max() <= 1.0 and np.abs(wave).max() > 0
    np.testing.assert_array_equal(wave, vocode(vocoder, units))  # deterministic (dropout off in eval)


def test_duration_predictor_formula_and_explicit_durations(tmp_path: Path) -> None:
    _, state = _reference_and_legacy_state(seed=1)
    state["dur_predictor.proj.weight"] = torch.zeros_like(state["dur_predictor.proj.weight"])
    state["dur_predictor.proj.bias"] = torch.tensor([math.log(4.0)])  # round(exp(x) - 1) = 3 frames per unit
    vocoder = load_vocoder(*_save(tmp_path, state))
    units = [4, 9, 2, 11, 6]
    assert vocoder.model.predict_durations(torch.as_tensor(units)).tolist() == [3] * 5
    assert vocode(vocoder, units).shape[0] == 5 * 3 * SAMPLES_PER_FRAME

    durations = [1, 2, 5, 1, 3]
    assert vocode(vocoder, units, durations).shape[0] == sum(durations) * SAMPLES_PER_FRAME
    # negative ids (padding) are dropped together with their durations
    assert vocode(vocoder, [4, -1, 9], [2, 7, 1]).shape[0] == 3 * SAMPLES_PER_FRAME
    state["dur_predictor.proj.bias"] = torch.tensor([-5.0])  # exp(x) - 1 < 0 -> clamped to 1 frame
    vocoder = load_vocoder(*_save(tmp_path, state))
    assert vocode(vocoder, units).shape[0] == 5 * SAMPLES_PER_FRAME
    with pytest.raises(ValueError, match="out of range"):
        vocode(vocoder, [3, 20])


def test_folded_weights_load_too(tmp_path: Path) -> None:
    reference, _ = _reference_and_legacy_state(seed=2)
    vocoder = load_vocoder(*_save(tmp_path, reference.state_dict()))
    units, durations = [1, 2, 3], [2, 2, 2]
    with torch.no_grad():
        expected = reference(torch.as_tensor(units), torch.as_tensor(durations)).numpy()
    np.testing.assert_allclose(vocode(vocoder, units, durations), expected, atol=1e-6)


def test_wav_written_at_16k(tmp_path: Path) -> None:
    _, state = _reference_and_legacy_state()
    vocoder = load_vocoder(*_save(tmp_path, state))
    wave = vocode(vocoder, [1, 2, 3], [4, 4, 4])
    out = write_wav_16k(tmp_path / "out" / "a.wav", wave)
    data, rate = sf.read(out, dtype="float32")
    assert rate == 16000 and data.shape == wave.shape
    assert np.abs(data - wave).max() < 1e-3
    assert not list(out.parent.glob(".*"))  # no temp files left behind


def test_missing_files_give_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VocoderNotFoundError, match="hifigan_lj_mhubert_base_25hz.pt"):
        load_vocoder(tmp_path / "nope.pt", tmp_path / "nope.json")
    monkeypatch.setenv("TEXTLESS_CHECKPOINT_ROOT", str(tmp_path))
    with pytest.raises(VocoderNotFoundError) as err:
        resolve_vocoder_files()
    assert CHECKPOINT_URL in str(err.value) and str(tmp_path) in str(err.value)
    _, state = _reference_and_legacy_state()
    ckpt, cfg = _save(tmp_path, state)
    assert resolve_vocoder_files(tmp_path) == (ckpt, cfg)


def test_pickled_extras_refused_without_opt_in(tmp_path: Path) -> None:
    _, state = _reference_and_legacy_state()
    paths = _save(tmp_path, state, extra={"args": argparse.Namespace(lr=0.1)})
    with pytest.raises(ValueError, match="allow_unsafe_pickle"):
        load_vocoder(*paths)
    assert load_vocoder(*paths, allow_unsafe_pickle=True).num_units == 20


def test_checkpoint_config_mismatch_is_named(tmp_path: Path) -> None:
    _, state = _reference_and_legacy_state()
    wrong = dict(TINY_CFG, upsample_initial_channel=32)
    with pytest.raises(ValueError, match="does not match config"):
        load_vocoder(*_save(tmp_path, state, cfg=wrong))


def test_cli_vocode_reads_three_input_kinds(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flows.cli_eval_extra import main, read_units_for_vocoding
    from slam_core.schemas import UNITS

    _, state = _reference_and_legacy_state()
    voc_dir = tmp_path / "voc"
    voc_dir.mkdir()
    _save(voc_dir, state)

    (tmp_path / "u.json").write_text("[3, 4, 5]")
    assert main(["vocode", "--units", str(tmp_path / "u.json"), "--out", str(tmp_path / "a.wav"),
                 "--vocoder", str(voc_dir)]) == 0
    assert sf.info(str(tmp_path / "a.wav")).samplerate == 16000

    table = pa.table({"segment_id": ["s0", "s1"], "dataset": ["d", "d"], "split": ["train", "train"],
                      "units": [[1, 2], [7, 8, 9]], "durations": [[1, 1], [2, 3, 4]], "n_frames": [2, 9],
                      "audio_seconds": [0.08, 0.36]}, schema=UNITS)
    pq.write_table(table, tmp_path / "units.parquet")
    assert read_units_for_vocoding(tmp_path / "units.parquet", segment_id="s1") == ([7, 8, 9], [2, 3, 4])
    assert main(["vocode", "--units", str(tmp_path / "units.parquet"), "--segment-id", "s1",
                 "--out", str(tmp_path / "b.wav"), "--vocoder", str(voc_dir)]) == 0
    assert sf.info(str(tmp_path / "b.wav")).frames == 9 * SAMPLES_PER_FRAME  # stored durations used

    gens = [{"pair_id": "x", "prompt_units": [1, 2], "generated_units": [3]}]
    (tmp_path / "g.json").write_text(json.dumps(gens))
    assert read_units_for_vocoding(tmp_path / "g.json", index=0) == ([1, 2, 3], None)
    with pytest.raises(ValueError, match="--index"):
        read_units_for_vocoding(tmp_path / "g.json")
    with pytest.raises(ValueError, match="no segment"):
        read_units_for_vocoding(tmp_path / "units.parquet", segment_id="nope")
    assert main(["vocode", "--units", str(tmp_path / "u.json"), "--out", str(tmp_path / "c.wav"),
                 "--vocoder", str(tmp_path / "missing")]) == 2
