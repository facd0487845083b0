"""`slam plan`: the whole paper run (Table 4's data mix, Appendix A values, budget, stage ETAs) printed before any
work, and nothing written under the data root, whether it is empty or already holds a catalog."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from flows.cli import main


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime (ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _plan(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_of_the_paper_preset_shows_the_table4_mix_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ./slam-data must not appear either
    monkeypatch.delenv("SLAM_DATA_ROOT", raising=False)
    root = tmp_path / "fresh-root"
    plan = _plan(capsys, "--preset", "slam", "--data-root", str(root), "--gpu", "H100")
    assert not root.exists() and not (tmp_path / "slam-data").exists() and list(tmp_path.iterdir()) == []

    rows = {(d["name"], d["role"], d["split"]) for d in plan["datasets"]}
    assert {("librilight", "train", "train"), ("librispeech", "train", "train-clean-100"),
            ("librispeech", "train", "train-clean-360"), ("librispeech", "train", "train-other-500"),
            ("stinystories", "train", "train"), ("librispeech", "validation", "dev-clean"),
            ("librispeech", "validation", "dev-other"), ("librilight", "validation", "validation")} <= rows
    assert plan["mix"]["train_sets"] == ["librilight", "librispeech", "stinystories"]
    by_key = {(d["name"], d["split"]): d for d in plan["datasets"]}
    # Table 8: Libri-Light 50K h / 3.5B tokens (1 % held out), LibriSpeech 960 h / 67M, sTinyStories 30K h / 2.2B
    assert by_key[("librilight", "train")]["tokens"] == pytest.approx(3.5e9 * 0.99)
    assert by_key[("librilight", "validation")]["hours"] == pytest.approx(500)
    train_ls = sum(d["tokens"] for d in plan["datasets"] if d["name"] == "librispeech" and d["role"] == "train")
    assert train_ls == pytest.approx(67e6, rel=0.01)
    assert by_key[("stinystories", "train")]["tokens"] == pytest.approx(2.2e9)
    assert all({"name", "role", "split", "hours", "tokens"} <= set(d) for d in plan["datasets"])

    # the resolved config as `slam run` records it, with the Appendix A values (Tables 4-6)
    cfg = plan["config"]
    assert cfg["model"]["base"] == "Qwen/Qwen2.5-0.5B" and cfg["model"]["twist_init"] is True
    assert cfg["model"]["rope_theta"] == 10_000 and cfg["model"]["context_len"] == 1024
    assert cfg["model"]["dtype"] == "bfloat16"
    t = cfg["train"]
    assert (t["budget_s"], t["micro_batch_size"], t["grad_accum"], t["lr"], t["min_lr"], t["warmup_frac"],
            t["grad_clip"]) == (23.5 * 3600, 8, 16, 1e-3, 5e-5, 0.01, 0.5)
    d = cfg["dpo"]
    assert (d["budget_s"], d["micro_batch_size"], d["grad_accum"], d["lr"], d["beta"], d["grad_clip"]) == (
        1800, 4, 16, 5e-5, 0.1, 0.5)
    assert (cfg["eval"]["temperature"], cfg["eval"]["top_k"], cfg["eval"]["max_new_tokens"]) == (0.8, 25, 150)
    assert cfg["corpus"]["pretrain_sets"] == ["librilight", "librispeech", "stinystories"]
    assert cfg["derived"]["examples_per_step"] == 128 and cfg["derived"]["max_tokens_per_step"] == 128 * 1024
    assert "code_version" in cfg

    # budget on the named GPU from the project's FLOP count (2.414 GFLOP/token) and the stated MFU
    b = plan["budget"]
    assert b["flops_per_token"] == pytest.approx(2.414e9, rel=1e-3) and b["assumed_mfu"] == 0.4
    assert plan["device"]["name"] == "H100" and plan["device"]["how"] == "named (--gpu)"
    # real tokens: 95 % of the computed buffers; a step is 128 examples of the paper's mean length (1.4 B tokens
    # over 17,625 steps of 128 examples)
    per_step = 128 * 1.4e9 / (17_625 * 128)
    assert b["tokens_per_step"] == pytest.approx(per_step, abs=0.1)
    assert b["steps"] == math.floor(84_600 * 0.4 * 989.4e12 / b["flops_per_token"] * 0.95 / per_step)
    assert b["paper"]["steps"] == 17_625 and b["paper"]["tokens"] == 1_400_000_000
    assert plan["schedule"]["examples_per_step"] == 128 and plan["schedule"]["optimizer_steps"] == b["steps"]
    assert plan["schedule"]["paper_optimizer_steps"] == 17_625

    stages = {s["name"]: s for s in plan["stages"]}
    assert {"fetch corpora", "segments + units", "k-means", "pre-training", "DPO", "evaluation"} <= set(stages)
    assert all("eta_s" in s and s["basis"] for s in plan["stages"])
    assert stages["pre-training"]["eta_s"] == 84_600 and stages["DPO"]["eta_s"] == 1_800
    assert stages["DPO"]["basis"].startswith("dpo.budget_s")  # no step or epoch cap: the budget is the length
    assert stages["fetch corpora"]["eta_s"] > 0 and stages["segments + units"]["eta_s"] > 0
    assert plan["resources"]["disk"]["parts"]["corpus archives + extracted audio"] > 6e12  # Libri-Light is huge


def test_plan_reads_an_existing_catalog_without_touching_it(tmp_path, capsys):
    from data_catalog import Artifact, Catalog

    root = tmp_path / "root"
    shard = root / "units" / "librispeech" / "dev-clean" / "units-00000.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"x" * 100)
    Catalog(root / "catalog.duckdb").record_artifact(Artifact(
        "units", "librispeech", "dev-clean", str(shard), "fp1", rows=10, tokens=1234, audio_seconds=360.0))
    ls_dir = tmp_path / "LibriSpeech"
    ls_dir.mkdir()
    before = _tree(tmp_path)
    os.sync()
    plan = _plan(capsys, "--preset", "slam", "--data-root", str(root), "--set", f"corpus.librispeech_dir={ls_dir}",
                 "--set", "corpus.librilight_subsets=[\"small\"]")
    assert _tree(tmp_path) == before
    dev_clean = next(d for d in plan["datasets"] if d["split"] == "dev-clean")
    assert dev_clean["in_catalog"] == {"unit_shards": 1, "tokens": 1234, "hours": pytest.approx(0.1)}
    assert dev_clean["tokens"] == 1234 and dev_clean["estimate"].startswith("catalog")
    # a local LibriSpeech copy is not downloaded; Libri-Light 'small' still is
    assert plan["stages"][0]["parts"] == ["librilight/small"]
    small = next(d for d in plan["datasets"] if d["name"] == "librilight" and d["role"] == "train")
    assert small["hours"] == pytest.approx(50_000 * 577 / 57_704 * 0.99, rel=1e-3)


def test_plan_human_output_and_cpu_without_throughput(tmp_path, capsys):
    capsys.readouterr()
    assert main(["plan", "--preset", "smoke", "--data-root", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "Datasets" in out and "Stages" in out and "pre-training" in out and "nothing was" in out
    assert not (tmp_path / "r").exists()
    plan = _plan(capsys, "--preset", "smoke", "--data-root", str(tmp_path / "r"), "--tokens-per-s", "16000")
    train = plan["config"]["train"]
    per_step = plan["budget"]["tokens_per_step"]
    assert per_step == train["micro_batch_size"] * train["grad_accum"] * min(512, 1.4e9 / (17_625 * 128))
    steps = math.floor(train["budget_s"] * 16000 / per_step)
    assert plan["budget"]["steps"] == min(steps, train["max_steps"] or steps)
    eta = next(s["eta_s"] for s in plan["stages"] if s["name"] == "pre-training")
    assert eta == pytest.approx(min(train["budget_s"], plan["budget"]["steps"] * per_step / 16000))
    dpo = next(s for s in plan["stages"] if s["name"] == "DPO")  # the budget is only an upper bound here
    assert dpo["eta_s"] == plan["config"]["dpo"]["budget_s"] and "at most" in dpo["basis"]
    assert f"dpo.max_steps={plan['config']['dpo']['max_steps']}" in dpo["basis"]
    assert [d["name"] for d in plan["datasets"] if d["role"] == "train"] == ["stories"]


def test_plan_while_a_run_holds_the_catalog_plans_without_it(tmp_path):
    from data_catalog import Catalog
    from flows.common import load_config
    from slam_core.plan import build_plan

    root = tmp_path / "root"
    catalog = Catalog(root / "catalog.duckdb")
    cfg = load_config("slam", None, str(root))
    with catalog.connect():  # a writer holds the database open
        plan = build_plan(cfg, gpu="A5000")
    assert plan["catalog"]["unread"] and plan["catalog"]["totals"] == []
    assert all(d["in_catalog"] is None for d in plan["datasets"])
    assert build_plan(cfg, gpu="A5000")["catalog"]["unread"] is None


def test_plan_prices_preprocessing_at_measured_rates(tmp_path, capsys, monkeypatch):
    """GPU-hours of units and synthesis for the paper mix at measured rates (device and date named), beside the
    training GPU-hours; a committed GPU bench result replaces the table's figure."""
    from slam_core import measured_rates

    monkeypatch.setattr(measured_rates, "BENCH_RESULTS", tmp_path / "none")
    plan = _plan(capsys, "--preset", "slam", "--data-root", str(tmp_path / "root"), "--gpu", "H200")
    pre = plan["preprocessing"]
    units, synth = pre["units"], pre["synthesis"]
    assert units["audio_hours"] == pytest.approx(50_000 + 960 + 30_000, rel=0.02)  # Libri-Light, LibriSpeech, sTinyStories
    assert units["gpu_hours"] == pytest.approx(units["audio_hours"] / units["x_realtime"], rel=1e-3)
    assert units["measured"]["device"] == "NVIDIA H200" and units["measured"]["date"] == "2026-12-04"
    assert "float32 is unmeasured" in units["note"]  # the table holds fp16 figures; the preset encodes in fp32
    assert synth["audio_hours"] == 30_000 and synth["gpu_hours"] == pytest.approx(30_000 / 429.0, rel=1e-3)
    assert pre["training"]["gpu_hours"] == pytest.approx((84_600 + 1_800) / 3600, rel=1e-3)
    assert pre["total_gpu_hours"] == pytest.approx(units["gpu_hours"] + synth["gpu_hours"] + pre["training"]["gpu_hours"],
                                                   abs=0.02)

    bench = tmp_path / "bench"
    bench.mkdir()
    machine = {"device": "NVIDIA H100 80GB HBM3", "date": "2027-01-02T10:00:00+00:00"}
    (bench / "units-gpu.json").write_text(json.dumps({"machine": machine, "hubert_base_25hz": {
        "dtype": "float32", "batch_size": 64, "x_realtime": 4_000.0, "fp16_x_realtime": 6_000.0}}))
    (bench / "synth-gpu.json").write_text(json.dumps({"machine": machine, "kokoro": {
        "aggregate_x_realtime": 1_200.0, "aggregate_workers": 4, "dtype": "float32"}}))
    monkeypatch.setattr(measured_rates, "BENCH_RESULTS", bench)
    pre = _plan(capsys, "--preset", "slam", "--data-root", str(tmp_path / "root"), "--gpu", "H200")["preprocessing"]
    assert pre["units"]["x_realtime"] == 4_000.0 and pre["units"]["measured"]["date"] == "2027-01-02"
    assert pre["units"]["measured"]["source"] == "bench/results/units-gpu.json"
    assert pre["synthesis"]["x_realtime"] == 1_200.0 and "4 process" in pre["synthesis"]["measured"]["setup"]


def test_plan_prices_the_interleaved_alignments_and_token_docs(tmp_path, capsys, monkeypatch):
    """slam_interleaved: sTinyStories aligned by a Parquet read of its synthesis timings (measured CPU rate),
    LibriSpeech by Whisper, whose GPU rate is unmeasured and said so (no ETA, not in the total), token docs at the
    measured CPU rate; a measured Whisper rate prices it. Speech-only presets get none of these lines."""
    from slam_core import measured_rates
    from slam_core.measured_rates import SYNTH_ALIGN_CPU, TOKEN_DOCS_CPU, MeasuredRate

    root = str(tmp_path / "root")
    plan = _plan(capsys, "--preset", "slam_interleaved", "--data-root", root, "--gpu", "A5000")
    stages = {s["name"]: s for s in plan["stages"]}
    ls, st, docs = (stages["word alignments: librispeech"], stages["word alignments: stinystories"],
                    stages["token docs"])
    assert ls["eta_s"] is None and ls["gpu_hours"] is None and ls["hours"] == pytest.approx(960, rel=0.01)
    assert "large-v3-turbo" in ls["basis"] and "unmeasured" in ls["basis"]
    assert "word alignments: librispeech" in plan["eta_unknown"]
    assert st["eta_s"] == pytest.approx(30_000 * 3600 / SYNTH_ALIGN_CPU.x_realtime) and st["gpu_hours"] == 0.0
    assert "Parquet read" in st["basis"] and SYNTH_ALIGN_CPU.date in st["basis"]
    train = {d["name"]: 0.0 for d in plan["datasets"] if d["role"] == "train"}
    for d in plan["datasets"]:
        if d["role"] == "train":
            train[d["name"]] += d["tokens"]
    assert docs["speech_unit_tokens"] == pytest.approx(sum(train.values()))
    assert docs["interleaved_unit_tokens"] == pytest.approx(train["librispeech"] + train["stinystories"])
    assert docs["eta_s"] == pytest.approx((docs["speech_unit_tokens"] + docs["interleaved_unit_tokens"])
                                          / TOKEN_DOCS_CPU["tokens_per_s"])
    pre = plan["preprocessing"]
    assert pre["alignment"]["gpu_hours"] is None and pre["alignment"]["unmeasured"] == ["word alignments: librispeech"]
    assert pre["total_gpu_hours"] == pytest.approx(
        pre["units"]["gpu_hours"] + pre["synthesis"]["gpu_hours"] + pre["training"]["gpu_hours"], abs=0.02)
    capsys.readouterr()
    assert main(["plan", "--preset", "slam_interleaved", "--data-root", root, "--gpu", "A5000"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "word alignments: librispeech" in out and "Whisper alignment of 961 h: unmeasured, not counted" in out

    rate = MeasuredRate(100.0, "NVIDIA H200", "2027-01-02", "test", "test")
    monkeypatch.setitem(measured_rates.WHISPER_ALIGN_TABLE, "large-v3-turbo", rate)
    plan = _plan(capsys, "--preset", "slam_interleaved", "--data-root", root, "--gpu", "H200")
    ls = next(s for s in plan["stages"] if s["name"] == "word alignments: librispeech")
    assert ls["gpu_hours"] == pytest.approx(ls["hours"] / 100.0, abs=0.01)
    assert ls["eta_s"] == pytest.approx(ls["hours"] * 3600 / 100.0) and "2027-01-02" in ls["basis"]
    assert plan["preprocessing"]["alignment"]["gpu_hours"] == ls["gpu_hours"]

    speech_only = _plan(capsys, "--preset", "slam", "--data-root", root, "--gpu", "A5000")
    assert not [s for s in speech_only["stages"] if s["name"].startswith(("word alignments", "token docs"))]
    assert "alignment" not in speech_only["preprocessing"]
