"""The one CLI error path: a user error is one `slam: error: <what> — <where> — <fix>` line and exit 2, before
any flow or shard starts; `--debug` shows the traceback; a user's file is never moved; a bad checkpoint beside a
good one is reported while the good one is still evaluated."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from flows.cli import main
from flows.cli_common import error_line
from slam_core.config import ConfigError, apply_overrides
from slam_core.errors import InputError
from slam_core.presets import get_preset


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("slam: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].count(" — ") >= 2, lines[0]  # what — where — how to fix
    return lines[0]


@pytest.mark.parametrize("override, hint", [
    ("units.nope=3", "units.n_units"), ("trian.lr=3", "did you mean train?"), ("train.lrr=1", "did you mean train.lr?"),
    ("run.seed=-1", "run.seed"), ("seed=1", "run"), ("justtext", "key=value"),
])
def test_unknown_mistyped_or_out_of_range_set_is_refused_before_any_flow(tmp_path, capsys, override, hint):
    rc = main(["run", "reproduce", "--preset", "smoke", "--data-root", str(tmp_path), "--set", override])
    assert rc == 2
    assert hint in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "catalog.duckdb").exists()  # no work started


def test_debug_flag_anywhere_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError):
        main(["run", "reproduce", "--data-root", str(tmp_path), "--set", "units.nope=3", "--debug"])
    with pytest.raises(ConfigError):
        main(["-v", "run", "reproduce", "--data-root", str(tmp_path), "--set", "units.nope=3"])


def test_a_bug_keeps_its_traceback():
    assert error_line(KeyError("x")) is None and error_line(ZeroDivisionError()) is None
    assert error_line(InputError("bad", "f.txt", "fix it")) == "slam: error: bad — f.txt — fix it"


def test_negative_batch_size_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["units", "extract", "--audio", str(tmp_path), "--out", str(tmp_path / "o"), "--batch-size", "-3"])
    assert exit_info.value.code == 2 and "must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["pickled", "wrong_shape", "random", "wrong_count"])
def test_bad_centroids_are_one_line(tmp_path, capsys, kind):
    (tmp_path / "audio").mkdir()
    path = tmp_path / "c.npy"
    if kind == "pickled":
        path.write_bytes(pickle.dumps({"cluster_centers_": [1, 2]}))
    elif kind == "wrong_shape":
        np.save(path, np.zeros(3, np.float32))
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    else:
        np.save(path, np.zeros((7, 96), np.float32))
    rc = main(["units", "extract", "--audio", str(tmp_path / "audio"), "--out", str(tmp_path / "o"),
               "--centroids", str(path), "--data-root", str(tmp_path / "root")])
    assert rc == 2
    line = _one_error_line(capsys) if kind in ("wrong_count",) else capsys.readouterr().err
    assert str(path) in line and "Traceback" not in line


def test_centroids_of_another_encoders_dimension_are_one_line(tmp_path, capsys):
    """500 centroids of dimension 768 (mHuBERT's) with the tiny encoder (96): refused before any work, in
    `units extract` and in `slam run`, naming both widths."""
    (tmp_path / "audio").mkdir()
    path = tmp_path / "km768.npy"
    np.save(path, np.zeros((500, 768), np.float32))
    rc = main(["units", "extract", "--audio", str(tmp_path / "audio"), "--out", str(tmp_path / "o"),
               "--centroids", str(path), "--data-root", str(tmp_path / "root")])
    assert rc == 2
    line = _one_error_line(capsys)
    assert "dimension 768 but encoder 'tiny' gives 96-dimensional features — --centroids —" in line
    rc = main(["run", "reproduce", "--data-root", str(tmp_path / "root"), "--set", f"units.kmeans_path={path}",
               "--set", "units.fit_kmeans=false"])
    assert rc == 2
    assert "— units.kmeans_path —" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists() and not (tmp_path / "root" / "catalog.duckdb").exists()


def test_model_init_refuses_an_existing_file_and_leaves_it(tmp_path, capsys):
    user_file = tmp_path / "notes.txt"
    user_file.write_text("precious")
    rc = main(["model", "init", "--base", "tiny-qwen2", "--out", str(user_file), "--preset", "smoke",
               "--data-root", str(tmp_path / "root")])
    assert rc == 2 and "existing file" in _one_error_line(capsys)
    assert user_file.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    assert main(["model", "init", "--base", "tiny-qwen2", "--out", str(other), "--preset", "smoke",
                 "--data-root", str(tmp_path / "root")]) == 2
    assert (other / "thesis.tex").read_text() == "x"


def test_atomic_dir_never_moves_a_file_aside(tmp_path):
    from slam_core.atomic import atomic_dir

    target = tmp_path / "out"
    target.write_text("user data")
    with pytest.raises(FileExistsError, match="left untouched"):
        with atomic_dir(target) as tmp:
            (tmp / "x").write_text("y")
    assert target.read_text() == "user data" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _bert_dir(path):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    return path


def test_base_model_that_is_not_a_causal_lm_is_one_line(tmp_path, capsys):
    rc = main(["model", "init", "--base", str(_bert_dir(tmp_path / "bert")), "--out", str(tmp_path / "m"),
               "--preset", "smoke", "--data-root", str(tmp_path / "root")])
    assert rc == 2 and "not a causal" in _one_error_line(capsys)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    assert main(["model", "init", "--base", "tiny-qwen2", "--out", str(root / "good"), "--preset", "smoke",
                 "--data-root", str(root / "data")]) == 0
    return root / "good"


def _copy_with(src, dest, mutate):
    import shutil

    shutil.copytree(src, dest)
    mutate(dest)
    return dest


def test_every_kind_of_bad_checkpoint_is_named(tmp_path, good_checkpoint):
    from slam_core.discovery import split_usable_checkpoints

    def truncate(d):
        f = d / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    def randomise(d):
        (d / "model.safetensors").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())

    def other_vocab(d):
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, "vocab_size": 202}))

    bad = {"missing": tmp_path / "nope", "truncated": _copy_with(good_checkpoint, tmp_path / "t", truncate),
           "random": _copy_with(good_checkpoint, tmp_path / "r", randomise),
           "vocab": _copy_with(good_checkpoint, tmp_path / "v", other_vocab),
           "not_lm": _bert_dir(tmp_path / "bert")}
    usable, rejected = split_usable_checkpoints([str(good_checkpoint), *map(str, bad.values())], 502)
    assert usable == [str(good_checkpoint)]
    reasons = dict(rejected)
    assert "not found" in reasons[str(bad["missing"])]
    assert "truncated" in reasons[str(bad["truncated"])] and "truncated" in reasons[str(bad["random"])]
    assert "units.n_units=200" in reasons[str(bad["vocab"])]
    assert "not a causal" in reasons[str(bad["not_lm"])]


def test_eval_of_only_bad_checkpoints_is_refused_before_any_flow(tmp_path, capsys):
    rc = main(["eval", "--checkpoint", str(tmp_path / "nope"), "--data-root", str(tmp_path / "root")])
    assert rc == 2 and "checkpoint not found" in _one_error_line(capsys)
    assert not (tmp_path / "root" / "catalog.duckdb").exists()


def test_judge_key_never_travels_in_clear_text_to_another_machine(monkeypatch):
    from slam_core.eval.judge import EndpointJudge
    from slam_core.input_checks import check_config_inputs

    monkeypatch.setenv("JUDGE_KEY", "secret")
    with pytest.raises(InputError, match="judge_allow_insecure"):
        EndpointJudge("http://10.0.0.5:8000/v1", "m", api_key_env="JUDGE_KEY")
    EndpointJudge("http://127.0.0.1:8000/v1", "m", api_key_env="JUDGE_KEY")  # loopback: fine
    EndpointJudge("https://judge.example/v1", "m", api_key_env="JUDGE_KEY")
    EndpointJudge("http://10.0.0.5:8000/v1", "m", api_key_env="JUDGE_KEY", allow_insecure=True)
    EndpointJudge("http://10.0.0.5:8000/v1", "m")  # no key, nothing secret to leak
    cfg = apply_overrides(get_preset("smoke"), {"eval.judge_endpoint": "http://judge.lan/v1",
                                                "eval.judge_api_key_env": "JUDGE_KEY"})
    with pytest.raises(InputError, match="eval.judge_endpoint"):
        check_config_inputs(cfg)
