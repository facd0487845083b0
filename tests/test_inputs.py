"""Inputs checked before any work: the published quantiser on paper presets, and strict evaluation inputs."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest

from slam_core.config import ConfigError, apply_overrides
from slam_core.inputs import InputsMissingError, check_inputs, missing_inputs
from slam_core.presets import get_preset
from slam_core.units.quantizer import convert_kmeans_pickle


class FakeKMeans:
    def __init__(self, centers: np.ndarray) -> None:
        self.cluster_centers_ = centers


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))            # an empty cache: nothing is there
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no whisper model either
    monkeypatch.setenv("TEXTLESS_CHECKPOINT_ROOT", str(tmp_path / "textless"))


def _slam(tmp_path, *overrides: str):
    return apply_overrides(get_preset("slam"), [f"run.data_root={tmp_path / 'root'}", *overrides])


def test_paper_preset_uses_the_published_quantiser_and_stops_without_it(tmp_path):
    cfg = _slam(tmp_path)
    assert cfg.resolve()["derived"]["quantizer"]["source"] == "published"
    with pytest.raises(InputsMissingError) as err:
        check_inputs(cfg, ("units",))
    msg = str(err.value)
    assert "units.kmeans_path" in msg and "slam units convert-kmeans" in msg
    assert str(tmp_path / "root" / "quantizer" / "mhubert_base_25hz_L11_km500.npy") in msg
    assert "eval.allow_skip" not in msg  # the quantiser is never skipped


def test_centroids_from_another_pickle_are_refused_in_full(tmp_path):
    pickle_path = tmp_path / "km.bin"
    pickle_path.write_bytes(pickle.dumps(FakeKMeans(np.ones((500, 4)))))
    cfg = _slam(tmp_path)
    convert_kmeans_pickle(pickle_path, cfg.kmeans_file, allow_unpickle=True, expected_sha256=None)
    with pytest.raises(InputsMissingError, match="converted from a pickle with sha256 .* expected 03cc04a9"):
        check_inputs(cfg, ("units",))
    own = hashlib.sha256(pickle_path.read_bytes()).hexdigest()
    assert missing_inputs(_slam(tmp_path, f"units.kmeans_source_sha256={own}"), ("units",)) == []


def test_fitting_a_new_kmeans_is_an_explicit_flagged_opt_in(tmp_path):
    with pytest.raises(ConfigError, match="units.fit_kmeans: true together with units.kmeans_path"):
        _slam(tmp_path, "units.fit_kmeans=true").resolve()
    with pytest.raises(ConfigError, match="units.kmeans_path: no quantiser .* convert-kmeans"):
        _slam(tmp_path, "units.kmeans_path=null").resolve()
    cfg = _slam(tmp_path, "units.kmeans_path=null", "units.fit_kmeans=true")
    derived = cfg.resolve()["derived"]
    assert derived["quantizer"] == {"source": "fitted", "compatible_with_published": False,
                                    "note": derived["warnings"][0]}
    assert "incompatible with the published vocoder and models" in derived["warnings"][0]
    assert missing_inputs(cfg, ("units",)) == []


def test_paper_preset_names_every_missing_eval_input(tmp_path):
    cfg = _slam(tmp_path, "eval.metrics=[\"sblimp\",\"swuggy\",\"genppl\",\"judge\"]")
    with pytest.raises(InputsMissingError) as err:
        check_inputs(cfg, ("eval",))
    msg = str(err.value)
    for field in ("eval.reference_path", "eval.vocoder", "eval.asr_model", "eval.ppl_lm",
                  "eval.judge_model / eval.judge_endpoint", "eval.genppl_prompts"):
        assert f"— {field} —" in msg, field
    assert "no sSC folder" in msg  # GenPPL's prompts are the correct samples of sSC (paper Section 3)
    assert msg.count("\n  ") == 6 and msg.endswith("--set eval.allow_skip=true")


def test_present_eval_inputs_pass(tmp_path):
    ref = tmp_path / "ref"
    for name in ("sblimp", "swuggy_inter", "swuggy_oov", "sSC"):
        (ref / name).mkdir(parents=True)
    import numpy as np
    import soundfile as sf

    for name in ("0_correct.wav", "1_incorrect.wav"):  # GenPPL's prompts: the correct samples of sSC
        sf.write(ref / "sSC" / name, np.zeros(16_000, np.float32), 16_000)
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "hifigan_lj_mhubert_base_25hz.pt").write_bytes(b"x")
    (voc / "hifigan_lj_mhubert_base_25hz_config.json").write_text("{}")
    asr = tmp_path / "whisper.pt"
    asr.write_bytes(b"x")
    lm = tmp_path / "lm"
    lm.mkdir()
    cfg = _slam(tmp_path, "eval.metrics=[\"sblimp\",\"swuggy\",\"genppl\"]", f"eval.reference_path={ref}",
                f"eval.vocoder={voc}", f"eval.asr_model={asr}", f"eval.ppl_lm={lm}")
    assert missing_inputs(cfg, ("eval",)) == []
    (ref / "swuggy_oov").rmdir()
    assert [m.what for m in missing_inputs(cfg, ("eval",))] == ["reference set swuggy_oov"]


def test_allow_skip_runs_and_says_what_will_be_skipped(tmp_path):
    cfg = _slam(tmp_path, "eval.allow_skip=true")
    skipped = check_inputs(cfg, ("eval",))
    assert {m.field for m in skipped} >= {"eval.reference_path", "eval.vocoder", "eval.ppl_lm"}
    assert "metrics whose inputs are missing are recorded as skipped" in " ".join(cfg.resolve()["derived"]["warnings"])


def test_smoke_preset_is_unchanged(tmp_path):
    cfg = apply_overrides(get_preset("smoke"), [f"run.data_root={tmp_path}"])
    assert cfg.units.fit_kmeans and cfg.eval.allow_skip
    assert check_inputs(cfg) == []


def test_plan_flags_a_fitted_kmeans_and_lists_missing_inputs(tmp_path):
    from slam_core.plan import build_plan

    plan = build_plan(_slam(tmp_path, "units.kmeans_path=null", "units.fit_kmeans=true"), gpu="H100")
    assert plan["quantizer"]["source"] == "fitted" and not plan["quantizer"]["compatible_with_published"]
    assert any("incompatible with the published vocoder and models" in w for w in plan["warnings"])
    kmeans_stage = next(s for s in plan["stages"] if s["name"] == "k-means")
    assert "incompatible with the published vocoder and models" in kmeans_stage["basis"]
    assert plan["config"]["derived"]["quantizer"]["source"] == "fitted"
    published = build_plan(_slam(tmp_path), gpu="H100")
    assert published["quantizer"]["source"] == "published" and published["warnings"] == []
    assert [m["field"] for m in published["missing_inputs"]][:3] == ["units.kmeans_path", "eval.reference_path",
                                                                     "eval.vocoder"]
    assert not (tmp_path / "root").exists()  # the plan wrote nothing


def test_slam_run_stops_before_any_work_with_one_error_line(tmp_path, capsys):
    from flows.cli import main

    assert main(["run", "reproduce", "--preset", "slam", "--data-root", str(tmp_path / "root")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("slam: error:")]
    assert len(err) == 1 and "slam units convert-kmeans" in err[0] and "eval.allow_skip=true" in err[0]
    assert not (tmp_path / "root").exists()


def test_interleaved_cm_generate_needs_its_judge_lm_before_any_work(tmp_path):
    """cm_generate scores its continuations with eval.ppl_lm: a missing one stops slam_interleaved at the start
    (not as a skipped row after training); smoke_interleaved (allow_skip) records it as skipped."""
    cfg = apply_overrides(get_preset("slam_interleaved"), [f"run.data_root={tmp_path / 'root'}"])
    assert [m.field for m in missing_inputs(cfg, ("eval",))] == ["eval.ppl_lm"]
    with pytest.raises(InputsMissingError, match="GenPPL text LM of cm_generate"):
        check_inputs(cfg, ("eval",))
    without = apply_overrides(cfg, ["interleave.cross_modal_metrics=[\"cm_tsc_t2s\"]"])
    assert missing_inputs(without, ("eval",)) == []
    smoke = apply_overrides(get_preset("smoke_interleaved"), [f"run.data_root={tmp_path / 'smoke'}"])
    assert [m.field for m in check_inputs(smoke, ("eval",))] == ["eval.ppl_lm"]  # skipped, the run goes on
