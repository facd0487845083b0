"""The dress rehearsal: inputs in the layouts the real readers take, the checks catch what they must, the plain
runtime behaves like Prefect where slam relies on it, and the whole rehearsal runs on CPU at reduced size with
the GPU host's import surface (no Prefect, spaCy or faiss)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared_data import REAL_SPEECH
from slam_core.rehearsal import checks, corpora

REPO = Path(__file__).resolve().parents[1]
SPEECH = sorted(REAL_SPEECH.glob("*.flac"))


@pytest.fixture(scope="module")
def cutter() -> corpora.SpeechCutter:
    return corpora.SpeechCutter(corpora.read_speech(SPEECH), seed=0)


def test_rehearsal_preset_is_the_paper_recipe_with_minute_budgets() -> None:
    from slam_core.presets import get_preset

    paper, rehearsal = get_preset("slam").model_dump(), get_preset("rehearsal").model_dump()
    changed = {(section, key) for section, fields in paper.items() for key, value in fields.items()
               if rehearsal[section][key] != value}
    assert changed == {("run", "name"), ("run", "device"), ("synth", "kokoro_speed"), ("synth", "shard_rows"),
                       ("units", "shard_segments"), ("train", "budget_s"), ("train", "checkpoint_every_s"),
                       ("train", "log_every_steps"), ("train", "calibration_steps"), ("dpo", "budget_s"),
                       ("eval", "n_generate"), ("eval", "asr_max_tokens")}
    assert rehearsal["train"]["budget_s"] + rehearsal["dpo"]["budget_s"] <= 120


def test_corpora_are_read_by_the_real_readers(tmp_path: Path, cutter: corpora.SpeechCutter) -> None:
    from slam_core.corpora import librilight, librispeech, text_hub

    stories, triples = corpora.text_corpus(4, 3, 2, seed=1)
    sentences = [s for story in stories for s in story["sentences"]]
    counts = corpora.write_librispeech(tmp_path / "ls", cutter, sentences, 3, seed=1)
    part = librispeech.find_part_dir(tmp_path / "ls", "train-clean-100")
    shard = librispeech.write_librispeech_shard(librispeech.list_utterances(part), tmp_path / "ls.parquet", "train")
    rows = pq.read_table(shard["path"]).to_pylist()
    assert counts["train-clean-100"] == len(rows) == 3 and shard["bad"] == []
    assert all(r["text"] and 2.5 < r["end_s"] < 9 for r in rows)

    info = corpora.write_librilight(tmp_path / "ll", cutter, 2, seed=1)
    subset = librilight.find_subset_dir(tmp_path / "ll", "small")
    ll = librilight.write_librilight_shard(librilight.list_recordings(subset), tmp_path / "ll.parquet", "small")
    assert ll["bad"] == [] and ll["rows"] >= 2 and math.isclose(ll["audio_seconds"], info["audio_seconds"], rel_tol=0.01)

    corpora.write_tinystories(tmp_path / "ts", stories)
    corpora.write_swag(tmp_path / "swag", triples, seed=1)
    told = text_hub.prepare_tinystories(tmp_path / "ts", tmp_path / "stories.parquet")
    swag = text_hub.prepare_swag(tmp_path / "swag", tmp_path / "triples.parquet", seed=1)
    assert told["rows"] == 7 and swag["rows"] == 7
    got = pq.read_table(tmp_path / "triples.parquet").to_pylist()
    chosen = {t["chosen_text"] for t in triples}
    assert all(any(c in g["chosen_text"] for c in chosen) for g in got)  # the gold ending is the chosen one


def test_eval_sets_have_the_published_layouts(tmp_path: Path, cutter: corpora.SpeechCutter) -> None:
    from slam_core.corpora.eval_sets import check_eval_set
    from slam_core.corpora.published_layout import published_sets

    expected = corpora.write_eval_sets(tmp_path / "ref", cutter, 3, ["cat", "dog", "sun", "hat"])
    found: dict[str, int] = {}
    for metric in ("sblimp", "swuggy", "ssc", "tsc", "salmon"):
        found |= {k: len(v) for k, v in published_sets(tmp_path / "ref", metric).items()}
    assert found == expected
    assert check_eval_set(tmp_path / "ref", "tsc")["pairs"] == 3
    assert check_eval_set(tmp_path / "ref", "salmon")["parts"] == {"bg_alignment": 3, "speaker_consistency": 3}


def test_checks_catch_what_a_real_run_must_not_have(tmp_path: Path) -> None:
    rows = [{"step": float(i), "loss": 5.0 - 0.5 * i, "grad_norm": 1.0} for i in range(6)]
    assert checks.finite_columns("t", rows, ("loss", "grad_norm"))["ok"]
    assert checks.trend("t", rows, "loss", "down")["ok"] and not checks.trend("t", rows, "loss", "up")["ok"]
    rows[3]["grad_norm"] = float("nan")
    bad = checks.finite_columns("t", rows, ("loss", "grad_norm"))
    assert not bad["ok"] and bad["detail"]["non_finite"][0][:2] == (3, "grad_norm")
    assert not checks.trend("t", rows[:2], "loss", "down")["ok"]  # too few steps to tell
    assert not checks.finite_columns("t", rows, ("reward_margin",))["ok"]  # never logged

    unit = pa.list_(pa.uint16())
    good, wide = tmp_path / "good.parquet", tmp_path / "wide.parquet"
    pq.write_table(pa.table({"units": pa.array([[0, 499]], unit), "durations": pa.array([[1, 2]], unit)}), good)
    pq.write_table(pa.table({"units": pa.array([[3, 500]], unit), "durations": pa.array([[1, 0]], unit)}), wide)
    assert checks.units_in_range("u", [good], 500)["ok"]
    problems = checks.units_in_range("u", [good, wide], 500)["detail"]["problems"]
    assert len(problems) == 2 and "outside" in problems[0] and "durations below 1" in problems[1]

    from safetensors.numpy import save_file

    (tmp_path / "ckpt").mkdir()
    save_file({"w": np.array([1.0, np.inf], np.float32)}, str(tmp_path / "ckpt" / "model.safetensors"))
    assert checks.finite_weights("c", tmp_path / "ckpt")["detail"]["non_finite_tensors"] == ["w"]
    assert not checks.finite_weights("c", tmp_path)["ok"]  # no weights at all

    class FakeCatalog:
        def eval_results(self, run: str) -> list[dict]:
            return [{"checkpoint": "c", "metric": "tsc", "value": 0.5, "details": "{}"},
                    {"checkpoint": "c", "metric": "genppl", "value": None, "details": json.dumps({"skipped": "no vocoder"})}]

    done = checks.metrics_computed(FakeCatalog(), "r", ["c"], ["tsc", "genppl", "sblimp"])
    assert not done["ok"] and done["detail"]["problems"] == ["genppl @ c: skipped (no vocoder)", "sblimp @ c: no result"]


PLAIN_RUNTIME_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from flows import plain_runtime
    plain_runtime.install()
    from prefect import flow, task

    calls = []

    @task(retries=2, retry_delay_seconds=[0, 0])
    def flaky(x):
        calls.append(x)
        if len(calls) < 3:
            raise RuntimeError("transient")
        return x * 2

    @task(name="boom")
    def boom():
        raise ValueError("bad input")

    @flow(name="f")
    def f():
        future = boom.submit()
        try:
            future.result()
        except ValueError as err:
            caught = str(err)
        return flaky.submit(21).result(), caught

    print(f(), len(calls), f.name, flaky.fn(1), plain_runtime.is_installed())

    from prefect.runtime import flow_run

    @flow(name="inner")
    def inner():
        return flow_run.parent_flow_run_id is not None, flow_run.flow_name

    @flow(name="outer")
    def outer():
        return flow_run.parent_flow_run_id is None, inner()

    print(outer(), flow_run.id)
""")


def test_plain_runtime_runs_flows_with_retries_and_deferred_errors() -> None:
    out = subprocess.run([sys.executable, "-c", PLAIN_RUNTIME_SCRIPT, str(REPO)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first.split() == ["(42,", "'bad", "input')", "3", "f", "2", "True"]
    assert second == "(True, (True, 'inner')) None"  # a flow called inside another is its subflow
    refused = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); import prefect; "
                              "from flows import plain_runtime; plain_runtime.install()"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "already imported" in refused.stderr


@pytest.mark.slow
def test_rehearsal_runs_every_stage_on_cpu_with_the_gpu_hosts_imports(tmp_path: Path) -> None:
    """In the CPU twin of the GPU host (scripts/gpu_twin.py fast): only the host's distributions (its transformers
    5.17) and the carry are importable, so a module the carry lacks fails here, named (no Prefect, spaCy or
    silero-vad there; faiss is the twin's one CPU-path addition: on a GPU torch assigns the units)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import gpu_twin

    twin = tmp_path / "twin"
    assert gpu_twin.main(["fast", "--venv", str(twin), "--source", sys.prefix]) == 0
    out_json = tmp_path / "rehearsal.json"
    env = {**gpu_twin.twin_env(twin), "OMP_NUM_THREADS": "2"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        [str(twin / "bin" / "python"), "scripts/rehearsal.py", "--size", "tiny", "--runtime", "plain", "--data-root",
         str(tmp_path / "data"), "--out", str(out_json), "--speech", str(REAL_SPEECH)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    result = json.loads(out_json.read_text())
    failures = [c for c in result["checks"] if not c["ok"]]
    assert proc.returncode == 0 and result["ok"] and not failures, (failures, proc.stdout[-3000:], proc.stderr[-3000:])
    assert list(result["stages"]) == ["build-inputs", "synth-stinystories", "synth-spokenswag", "prepare-librispeech",
                                      "prepare-data", "train-lm", "evaluate"]
    assert result["runtime"] == "plain" and len(result["checks"]) == 19
    assert {"librilight/validation", "librispeech/dev-other", "stinystories/train"} <= set(result["data_mix"])
    metrics = result["checks"][-3]["detail"]["values"]
    assert len(metrics) == 2 * 10 and all(math.isfinite(v) for v in metrics.values())


def test_kokoro_model_imports_without_spacy() -> None:
    """kokoro's package __init__ imports spaCy (for an English pipeline slam does not use); the GPU host has none."""
    script = (f"import sys; sys.path.insert(0, {str(REPO)!r}); sys.modules['spacy'] = None\n"
              "from slam_core.synth.kokoro_tts import import_kmodel\n"
              "print(import_kmodel().__module__, 'spacy' in sys.modules and sys.modules['spacy'] is not None)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["kokoro.model", "False"]


def test_plain_runtime_provides_every_prefect_name_the_flows_and_tasks_import() -> None:
    """A new `from prefect.x import y` in flows/ or tasks/ must be added to the plain runtime, or the GPU rehearsal
    (no Prefect there) breaks: caught here in a second instead of minutes into the slow run."""
    import ast

    wanted: set[tuple[str, str]] = set()
    for path in [*(REPO / "flows").glob("*.py"), *(REPO / "tasks").glob("*.py")]:
        if path.name in ("plain_runtime.py", "cli_deploy.py", "temporary_server.py"):  # a Prefect server's: never plain
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prefect":
                wanted |= {(node.module, a.name) for a in node.names}
    script = (f"import sys, json; sys.path.insert(0, {str(REPO)!r})\n"
              "from flows import plain_runtime; plain_runtime.install()\n"
              f"wanted = {sorted(wanted)!r}\n"
              "print(json.dumps([f'{m}.{n}' for m, n in wanted if not hasattr(sys.modules.get(m), n)]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert ("prefect", "flow") in wanted and json.loads(out.stdout) == []
