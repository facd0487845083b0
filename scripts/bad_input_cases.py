"""The bad-input suite's hostile-user cases, beside its corpus and archive ones (scripts/bad_input_suite.py).

Each group feeds bad input next to good input through the real entry points and checks the outcome class:
- values: float WAVs of ±3e38 at 16 and 8 kHz, Inf samples, a 1-sample file, same-stem `x.wav` + `x.flac`
  (corpus shard); huge audio in a `units extract` folder and a shard with unit 65535 (units commit check);
- refused: unknown, mistyped and out-of-range `--set`, a negative `--batch-size`, pickled / wrong-shape /
  wrong-count / random centroids, truncated / random weights, a base that is not a causal LM, a checkpoint of
  another vocabulary, a missing checkpoint folder: one `slam: error:` line, exit 2, no traceback, nothing written;
- isolation: a bad checkpoint beside a good one, a SWAG folder whose validation file is empty, not UTF-8,
  lacks a column or is random bytes, non-numeric labels: the good part goes on;
- state: two configs writing one path, a same-size rewrite behind the catalog's back, a file in the way of
  `model init --out` and of an output directory: never served, never moved;
- security: the judge key over plain http to another host; the DPO reference of a resumed run whose stored
  log-probs are gone (from the initial model, or a clear error when that is gone too).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

SR = 16_000
Row = dict[str, Any]


def _row(name: str, handled_as: str, ok: bool, detail: str = "", segments: Any = "") -> Row:
    return {"input": name, "handled_as": handled_as, "segments": segments, "ok": bool(ok), "detail": detail}


def _huge(n: int) -> np.ndarray:
    return np.where(np.arange(n) % 2 == 0, 3e38, -3e38).astype(np.float32)


# ---- values: what a shard may hold ------------------------------------------------------------------------


def more_audio_cases(spk: Path, good: list[Path]) -> dict[str, dict[str, Any]]:
    """Extra inputs for the suite's mixed corpus shard: name -> {path, expect}."""
    cases: dict[str, dict[str, Any]] = {}
    sf.write(spk / "huge-16k.wav", _huge(2 * SR), SR, subtype="FLOAT")
    cases["±3e38 float WAV, 16 kHz"] = {"path": spk / "huge-16k.wav", "expect": {"out_of_range"}}
    sf.write(spk / "huge-8k.wav", _huge(8000), 8000, subtype="FLOAT")
    cases["±3e38 float WAV, 8 kHz (resampled)"] = {"path": spk / "huge-8k.wav", "expect": {"out_of_range"}}
    inf = np.zeros(SR, np.float32)
    inf[100] = np.inf
    sf.write(spk / "inf.wav", inf, SR, subtype="FLOAT")
    cases["one Inf sample"] = {"path": spk / "inf.wav", "expect": {"non_finite"}}
    sf.write(spk / "one-sample.wav", np.zeros(1, np.float32), SR, subtype="FLOAT")
    cases["1-sample file"] = {"path": spk / "one-sample.wav", "expect": {"no_speech", "too_short", "empty"}}
    wave, rate = sf.read(str(good[0]), dtype="float32")
    sf.write(spk / "twin.wav", wave, rate, subtype="PCM_16")
    shutil.copy(good[0], spk / "twin.flac")
    cases["same stem: twin.wav"] = {"path": spk / "twin.wav", "expect": {"segmented"}}
    cases["same stem: twin.flac"] = {"path": spk / "twin.flac", "expect": {"segmented"}}
    return cases


def check_distinct_ids(segments: list[dict]) -> list[str]:
    ids = [s["segment_id"] for s in segments]
    return [] if len(ids) == len(set(ids)) else ["segment ids collide in the mixed shard"]


def run_units(work: Path) -> tuple[list[Row], list[str]]:
    """`units extract` over a folder with huge-float files beside good audio, and the shard commit check."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from slam_core.units.encoder import TINY_ENCODER_LAYER, build_tiny_encoder, load_encoder
    from slam_core.units.extract import UnitExtractor
    from slam_core.units.shards import extract_audio_dir
    from slam_core.units.quantizer import fit_kmeans
    from slam_core.units.validate import InvalidUnitsError, check_unit_table

    audio = work / "units-audio"
    audio.mkdir(parents=True)
    t = np.arange(3 * SR) / SR
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    sf.write(audio / "good.wav", tone, SR)
    sf.write(audio / "huge.wav", _huge(2 * SR), SR, subtype="FLOAT")
    sf.write(audio / "huge-44k.wav", _huge(44_100), 44_100, subtype="FLOAT")
    encoder = load_encoder(str(build_tiny_encoder(work / "tiny-encoder", seed=0)), "cpu", torch.float32)
    feats = UnitExtractor(encoder, None, TINY_ENCODER_LAYER).features([tone])
    extractor = UnitExtractor(encoder, fit_kmeans(feats[0], 8, 5, 0), TINY_ENCODER_LAYER, batch_size=4)
    [shard] = extract_audio_dir(audio, work / "units-out", extractor)
    units = [u for r in pq.read_table(shard["path"]).to_pylist() for u in r["units"]]
    bad = {b[0]: b[1] for b in shard["bad"]}
    rows = [_row("units: ±3e38 WAV beside good", bad.get("huge.wav", "written"), bad.get("huge.wav") == "out_of_range",
                 f"units {min(units)}..{max(units)} of {extractor.n_units}, good file kept"),
            _row("units: ±3e38 WAV at 44.1 kHz", bad.get("huge-44k.wav", "written"),
                 bad.get("huge-44k.wav") == "out_of_range")]
    in_range = bool(units) and max(units) < extractor.n_units
    rows.append(_row("units: every id < n_units", "checked", in_range, f"{len(units)} units"))
    shard_65535 = pa.table({"units": pa.array([[1, 65535]], pa.list_(pa.uint16()))})
    try:
        check_unit_table(shard_65535, 500, "units-65535.parquet")
        handled = "written"
    except InvalidUnitsError:
        handled = "refused_at_commit"
    rows.append(_row("shard holding unit 65535", handled, handled == "refused_at_commit"))
    return rows, [f"{r['input']}: handled as {r['handled_as']}" for r in rows if not r["ok"]]


# ---- refused: one line, exit 2, nothing written --------------------------------------------------------------


def _cli(argv: list[str]) -> tuple[int, str]:
    from flows.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exit_info:  # argparse usage errors
            rc = int(exit_info.code or 0)
        except Exception as exc:  # a traceback: the case fails
            return -1, f"{type(exc).__name__}: {exc}"
    return rc, err.getvalue()


def _good_model(work: Path) -> Path:
    out = work / "good-model"
    if not out.exists():
        rc, err = _cli(["model", "init", "--base", "tiny-qwen2", "--out", str(out), "--preset", "smoke",
                        "--data-root", str(work / "model-root")])
        if rc != 0:
            raise RuntimeError(f"could not build the good model: {err}")
    return out


def _bad_models(work: Path, good: Path) -> dict[str, Path]:
    def copy(name: str) -> Path:
        dest = work / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(good, dest)
        return dest

    truncated = copy("truncated-weights")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    random_weights = copy("random-weights")
    (random_weights / "model.safetensors").write_bytes(np.random.default_rng(0).integers(0, 256, 8192, np.uint8).tobytes())
    vocab = copy("other-vocab")
    config = json.loads((vocab / "config.json").read_text())
    (vocab / "config.json").write_text(json.dumps({**config, "vocab_size": 1026}))
    encoder = work / "encoder-not-lm"
    encoder.mkdir(exist_ok=True)
    (encoder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    return {"truncated": truncated, "random": random_weights, "vocab": vocab, "encoder": encoder}


def run_refusals(work: Path) -> tuple[list[Row], list[str]]:
    work.mkdir(parents=True, exist_ok=True)
    root = work / "root"  # must stay without a catalog: every case is refused before any work
    audio = work / "refusal-audio"
    audio.mkdir(exist_ok=True)
    sf.write(audio / "a.wav", np.zeros(SR, np.float32), SR)
    pickled, flat, counted, noise = (work / f"{n}.npy" for n in ("pickled", "flat", "counted", "noise"))
    pickled.write_bytes(pickle.dumps({"cluster_centers_": [[0.0]]}))
    np.save(flat, np.zeros(5, np.float32))
    np.save(counted, np.zeros((7, 96), np.float32))
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 999, np.uint8).tobytes())
    models = _bad_models(work, _good_model(work))
    user_file = work / "my-notes.txt"
    user_file.write_text("keep me")
    foreign_dir = work / "my-project"
    foreign_dir.mkdir(exist_ok=True)
    (foreign_dir / "paper.tex").write_text("keep me too")
    common = ["--preset", "smoke", "--data-root", str(root)]
    extract = ["units", "extract", "--audio", str(audio), "--out", str(work / "refused-units"), *common]
    init = ["model", "init", "--base", "tiny-qwen2", *common, "--out"]
    cases = {
        "--set units.nope=3 (unknown field)": ["run", "reproduce", *common, "--set", "units.nope=3"],
        "--set trian.lr=3 (mistyped section)": ["run", "reproduce", *common, "--set", "trian.lr=3"],
        "--set run.seed=-1": ["run", "reproduce", *common, "--set", "run.seed=-1"],
        "--set train.lr=abc": ["run", "train-lm", *common, "--set", "train.lr=abc"],
        "--set without =": ["run", "reproduce", *common, "--set", "units.n_units"],
        "--batch-size -3": [*extract, "--batch-size", "-3"],
        "pickled centroids": [*extract, "--centroids", str(pickled)],
        "centroids of shape (5,)": [*extract, "--centroids", str(flat)],
        "7 centroids for 500 units": [*extract, "--centroids", str(counted)],
        "random bytes as centroids": [*extract, "--centroids", str(noise)],
        "--audio that does not exist": ["units", "extract", "--audio", str(work / "nowhere"), "--out",
                                        str(work / "o"), *common],
        "base with truncated weights": ["model", "init", "--base", str(models["truncated"]), *common, "--out",
                                        str(work / "m1")],
        "base with random weights": ["model", "init", "--base", str(models["random"]), *common, "--out",
                                     str(work / "m2")],
        "base that is not a causal LM": ["model", "init", "--base", str(models["encoder"]), *common, "--out",
                                         str(work / "m3")],
        "model init --out existing file": [*init, str(user_file)],
        "model init --out foreign folder": [*init, str(foreign_dir)],
        "eval: missing checkpoint folder": ["eval", "--checkpoint", str(work / "no-such-ckpt"), *common],
        "eval: checkpoint of another vocab": ["eval", "--checkpoint", str(models["vocab"]), *common],
        "eval: truncated checkpoint": ["eval", "--checkpoint", str(models["truncated"]), *common],
        "judge key over http to 10.0.0.5": ["run", "evaluate", *common, "--set", "eval.judge_endpoint=http://10.0.0.5/v1",
                                            "--set", "eval.judge_api_key_env=HOME", "--set", "eval.judge_model=j"],
    }
    rows, failures = [], []
    for name, argv in cases.items():
        rc, err = _cli(argv)
        lines = [ln for ln in err.splitlines() if ln.startswith(("slam: error:", "usage:", "slam "))]
        one_line = rc == 2 and "Traceback" not in err and any("error" in ln for ln in lines)
        rows.append(_row(name, "refused (exit 2)" if one_line else f"exit {rc}", one_line,
                         next((ln for ln in err.splitlines() if "error" in ln), err.strip()[-120:])))
        if not one_line:
            failures.append(f"{name}: exit {rc}, {err.strip()[-200:]}")
    untouched = (user_file.read_text() == "keep me" and (foreign_dir / "paper.tex").read_text() == "keep me too"
                 and not list(work.glob(".my-notes*")))
    rows.append(_row("user files after the refusals", "untouched" if untouched else "MOVED", untouched))
    wrote = (root / "catalog.duckdb").exists() or (root / "runs").exists()
    rows.append(_row("data root after the refusals", "nothing written" if not wrote else "WRITTEN", not wrote))
    failures += [] if untouched else ["a user's file was moved or changed"]
    failures += [] if not wrote else [f"a refused command wrote under {root}"]
    return rows, failures


# ---- isolation: the good part goes on ---------------------------------------------------------------------


def _swag_row(i: int, label: Any = 1) -> dict:
    return {"video-id": f"v{i}", "fold-ind": str(i), "startphrase": "x", "sent1": f"A girl opens door number {i}.",
            "sent2": "The girl", "gold-source": "gold", "ending0": f"walks in slowly {i}.",
            "ending1": f"waves at a friend {i}.", "ending2": f"closes it again {i}.", "ending3": f"sits down {i}.",
            "label": label}


def run_isolation(work: Path) -> tuple[list[Row], list[str]]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    from slam_core.corpora import text_hub
    from slam_core.discovery import split_usable_checkpoints

    rows: list[Row] = []
    good = _good_model(work)
    models = _bad_models(work, good)
    usable, rejected = split_usable_checkpoints([str(models["truncated"]), str(good), str(work / "gone"),
                                                 str(models["vocab"])], 502)
    ok = usable == [str(good)] and len(rejected) == 3
    rows.append(_row("eval: 3 bad checkpoints beside a good one", f"{len(usable)} evaluated, {len(rejected)} reported",
                     ok))
    validation = {"empty": b"", "not UTF-8": "sent1,label\nCaf\xe9,1\n".encode("latin-1"), "random bytes":
                  np.random.default_rng(2).integers(0, 256, 3000, np.uint8).tobytes()}
    missing = io.BytesIO()
    pa_csv.write_csv(pa.Table.from_pylist([{k: v for k, v in _swag_row(0).items() if k != "label"}]), missing)
    validation["missing the label column"] = missing.getvalue()
    for name, data in validation.items():
        folder = work / f"swag-{name.replace(' ', '-')}"
        folder.mkdir(parents=True, exist_ok=True)
        labels = [1, 2, "abc", 0, "", 3]  # two labels that are not numbers
        pa_csv.write_csv(pa.Table.from_pylist([_swag_row(i, str(v)) for i, v in enumerate(labels)]),
                         folder / "train.csv")
        (folder / "val.csv").write_bytes(data)
        try:
            out = text_hub.prepare_swag(folder, folder / "triples.parquet", seed=0)
            handled = f"train {out['per_split'].get('train', 0)} kept, val reported"
            ok = out["per_split"] == {"train": 4} and list(out["unreadable"]) == [str(folder / "val.csv")] \
                and out["dropped"].get("bad_label_or_text") == 2
        except Exception as err:  # the train split was lost
            handled, ok = f"failed: {type(err).__name__}", False
        rows.append(_row(f"SWAG val.csv {name}", handled, ok, "2 non-numeric labels dropped and counted"))
    return rows, [f"{r['input']}: {r['handled_as']}" for r in rows if not r["ok"]]


# ---- state: nothing stale, nothing lost -------------------------------------------------------------------


def run_state(work: Path) -> tuple[list[Row], list[str]]:
    from data_catalog import Catalog, produce_or_reuse
    from slam_core.atomic import atomic_dir

    work.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(work / "state-catalog.duckdb")
    out = work / "shared-name.parquet"

    def writer(text: str):
        def produce() -> dict:
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, out)
            return {"rows": 1}
        return produce

    common = dict(stage="units", dataset="d", split="train", out_path=out)
    produce_or_reuse(catalog, fingerprint="config-a", produce=writer("bytes of config A"), **common)
    produce_or_reuse(catalog, fingerprint="config-b", produce=writer("bytes of config B!"), **common)
    a_again = produce_or_reuse(catalog, fingerprint="config-a", produce=writer("bytes of config A"), **common)
    ok = not a_again["reused"] and out.read_text() == "bytes of config A"
    rows = [_row("two configs, one output path", "redone, not served" if ok else "SERVED STALE", ok)]
    out.write_text("bytes of config X")  # same size as A's, behind the catalog's back
    stale = catalog.find_artifact(out, "config-a")
    rows.append(_row("same-size rewrite behind the catalog", "reported, redone" if stale is None else "SERVED",
                     stale is None))
    in_the_way = work / "results"
    in_the_way.write_text("a user's file")
    try:
        with atomic_dir(in_the_way) as tmp:
            (tmp / "x").write_text("y")
        handled = "replaced"
    except FileExistsError:
        handled = "refused"
    ok = handled == "refused" and in_the_way.read_text() == "a user's file"
    rows.append(_row("file in the way of an output dir", handled, ok))
    return rows, [f"{r['input']}: {r['handled_as']}" for r in rows if not r["ok"]]


# ---- security ------------------------------------------------------------------------------------------


def run_security(work: Path) -> tuple[list[Row], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from slam_core.config import DpoConfig, ModelConfig
    from slam_core.errors import InputError
    from slam_core.eval.judge import EndpointJudge
    from slam_core.lm import dpo
    from slam_core.lm.model import init_speech_lm, resolve_base
    from slam_core.schemas import PREFERENCE_UNITS

    rows = []
    os.environ.setdefault("SLAM_SUITE_JUDGE_KEY", "not-a-real-key")
    for url, expect in (("http://10.0.0.5:8000/v1", "refused"), ("http://judge.example.org/v1", "refused"),
                        ("http://127.0.0.1:8000/v1", "allowed"), ("https://judge.example.org/v1", "allowed")):
        try:
            EndpointJudge(url, "m", api_key_env="SLAM_SUITE_JUDGE_KEY")
            got = "allowed"
        except InputError:
            got = "refused"
        rows.append(_row(f"judge key to {url}", got, got == expect))
    model_cfg = ModelConfig(base="tiny-qwen2", context_len=64, dtype="float32", tiny_hidden_size=32, tiny_layers=1)
    init = Path(init_speech_lm(model_cfg, resolve_base(model_cfg, work), work / "dpo-init", seed=0)["path"])
    rng = np.random.default_rng(0)
    prefs = work / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist([{"pair_id": f"p{i}", "prompt_units": rng.integers(0, 50, 6).tolist(),
                                          "chosen_units": rng.integers(0, 50, 5).tolist(),
                                          "rejected_units": rng.integers(0, 500, 5).tolist()} for i in range(8)],
                                        schema=PREFERENCE_UNITS), prefs)
    cfg = DpoConfig(max_steps=2, budget_s=600, lr=5e-3, warmup_steps=0, micro_batch_size=4, grad_accum=1)
    run = work / "dpo-run"
    dpo.train_dpo(init, prefs, model_cfg, cfg, run, seed=0, device="cpu")
    stored = torch.load(run / dpo.REFERENCE_FILE, weights_only=True)
    (run / dpo.REFERENCE_FILE).unlink()
    dpo.train_dpo(init, prefs, model_cfg, cfg.model_copy(update={"max_steps": 3}), run, seed=0, device="cpu")
    same = torch.allclose(torch.load(run / dpo.REFERENCE_FILE, weights_only=True), stored)
    rows.append(_row("DPO reference lost, resumed", "from the initial model" if same else "FROM THE POLICY", same))
    (run / dpo.REFERENCE_FILE).unlink()
    shutil.rmtree(init)
    try:
        dpo.train_dpo(init, prefs, model_cfg, cfg.model_copy(update={"max_steps": 4}), run, seed=0, device="cpu")
        got = "recomputed from the policy"
    except InputError:
        got = "refused"
    rows.append(_row("DPO reference and initial model lost", got, got == "refused"))
    return rows, [f"{r['input']}: {r['handled_as']}" for r in rows if not r["ok"]]


GROUPS = (("units", run_units), ("refused", run_refusals), ("isolation", run_isolation), ("state", run_state),
          ("security", run_security))


def run_all(work: Path) -> tuple[list[Row], list[str]]:
    rows, failures = [], []
    for name, group in GROUPS:
        group_rows, group_failures = group(work / name)
        rows += group_rows
        failures += group_failures
    return rows, failures
