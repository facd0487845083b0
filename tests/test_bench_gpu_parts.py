"""The GPU bench parts (`python -m bench.run_all --gpu`) run their own code on the CPU in smoke mode, so the
prepared GPU command does not first fail on a GPU host over a bug that a CPU could have shown."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is no installed package

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _run(module_name: str) -> tuple[dict, list[dict]]:
    import importlib

    saved: list[dict] = []
    results = importlib.import_module(module_name).run_gpu(budget_s=1e6, save=lambda r: saved.append(dict(r)), smoke=True)
    return results, saved


def test_units_part_reports_the_default_mode_and_its_invariance():
    results, saved = _run("bench.bench_units")
    r = results["hubert_base_25hz"]
    assert r["mode"] == "invariant" and r["matmul"].startswith("blocks") and r["x_realtime"] > 0
    assert r["equal_to_one_at_a_time"] is True and r["previous_invariant_equal_to_one_at_a_time"] is True
    assert r["speed_vs_previous_invariant"] > 0 and r["padded_speed_vs_invariant"] > 0
    assert 0.9 <= r["padded_frame_agreement"] <= 1.0
    agreement = r["fp32_agreement"]["float32"]  # row-wise kernels vs the stock modules, both float32 on CPU
    assert agreement["synthetic_speech"]["agreement"] >= 0.95 and agreement["synthetic_speech"]["frames"] > 100
    assert len(saved) >= 2 and "hubert_base_25hz" in saved[0]  # written after the first part already


def test_generate_part_compares_with_hf_generate():
    results, saved = _run("bench.bench_generate")
    assert results["prompts_per_s"] > 0 and results["baseline_prompts_per_s"] > 0 and results["kv_cache"] == "static"
    assert results["ratio"] == pytest.approx(results["prompts_per_s"] / results["baseline_prompts_per_s"])
    assert "dynamic_cache_prompts_per_s" in results
    assert saved[0]["phase"] == "warm-up" and saved[1]["prompts_per_s"] > 0  # a figure after one batch already
    assert saved[-1]["phase"] == "baseline timed" and results["timed_prompts"] == results["n_prompts"]


def test_synth_part_measures_dtypes_and_worker_processes():
    pytest.importorskip("kokoro")
    results, _ = _run("bench.synth_gpu")
    k = results["kokoro"]
    assert [r["dtype"] for r in k["single_process"]] == ["float32", "bfloat16"]
    assert all("x_realtime" in r for r in k["single_process"]), k["single_process"]
    bf16 = k["dtype_agreement"]["bfloat16"]
    assert bf16["finite"] and 0 <= bf16["same_length_share"] <= 1 and bf16["log_spectral_distance_db"] >= 0
    assert bf16["log_mel_distance_same_length"] is None or bf16["log_mel_distance_same_length"] >= 0
    assert k["dtype_choice"]["dtype"] in ("float32", "bfloat16") and "float32" in k["dtype_choice"]["passing"]
    runs = {(r["kind"], r["workers"]): r for r in k["aggregate"]}
    assert set(runs) == {("text_to_audio", 2), ("model_processes", 2), ("text_to_audio", 0)}, k["aggregate"]
    for run in runs.values():  # the figure with what it counts: processes, utterances, audio and wall seconds
        assert run["x_realtime_aggregate"] > 0 and run["utterances"] > 0 and run["audio_s"] > 0, run
        assert run["x_realtime_aggregate"] == pytest.approx(run["audio_s"] / run["wall_s"], rel=0.05, abs=0.1)
    pipeline = runs[("text_to_audio", 2)]
    assert pipeline["includes_g2p"] and pipeline["g2p_workers"] == 2 and pipeline["gpu_processes"] == 1
    assert pipeline["failed_utterances"] == 0 and pipeline["g2p_wait_s"] >= 0 and k["g2p_one_process"]["sentences"] > 0
    assert runs[("model_processes", 2)]["includes_g2p"] is False and runs[("model_processes", 2)]["gpu_processes"] == 2
    assert k["aggregate_x_realtime"] > 0 and k["aggregate_workers"] == 2 and k["aggregate_status"] == "measured"
    fastest = max((r for r in runs.values() if r["workers"] > 1), key=lambda r: r["x_realtime_aggregate"])
    assert k["aggregate_kind"] == fastest["kind"] and k["aggregate_utterances"] == fastest["utterances"]


def test_kokoro_aggregate_is_never_one_process():
    """Workers that do not report in time are stopped and recorded as not reached; one process is not reported as
    the aggregate (the 2026-12-04 H200 run did that with the several-process run killed)."""
    from bench import synth_gpu

    kokoro = {"single_process": [{"dtype": "float32", "batch_size": 64, "x_realtime": 429.0}],
              "aggregate": [{"workers": 4, "not_reached": "0 of 4 workers reported within 20 s; stopped"}]}
    synth_gpu.summarize(kokoro, kokoro["single_process"][0])
    assert kokoro["x_realtime_one_process"] == 429.0 and kokoro["aggregate_x_realtime"] is None
    assert kokoro["aggregate_status"].startswith("not reached: model_processes with 4 workers: 0 of 4 workers reported")
    in_process = {"kind": "text_to_audio", "workers": 0, "g2p_workers": 0, "x_realtime_aggregate": 500.0}
    kokoro["aggregate"].append(in_process)  # G2P in the model's process: one process, never the aggregate
    synth_gpu.summarize(kokoro, kokoro["single_process"][0])
    assert kokoro["aggregate_x_realtime"] is None
    stopped = synth_gpu.aggregate(2, "float32", 2, 9.0, run_s=60.0, device="cpu", phonemes=(8, 16), small=True,
                                  wait_s=1.0)
    assert stopped["not_reached"].startswith("0 of 2 workers reported within 1 s")
