"""What a user meets when they make a mistake: one `slam: error: <what> — <where> — <fix>` line, exit 2, no
traceback, before Prefect starts (a mistyped preset in `slam run` and `slam plan`, a read-only data root, a
catalog held by another process, a missing input named by `--set`); in a flow run, the failed state carries
the line, worded for deployment parameters when a deployment started it."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from flows.cli import main
from flows.entry import for_deployment
from slam_core.data_root import check_data_root, check_writable
from slam_core.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("slam: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].count(" — ") >= 2, lines[0]  # what — where — how to fix
    return lines[0]


def _slam(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    """`slam ...` in a fresh process with its own PREFECT_HOME (created only if Prefect starts)."""
    full_env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), **env}
    return subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("command", ["run reproduce", "plan"])
def test_a_mistyped_preset_is_one_line_before_prefect_starts(tmp_path, command):
    t0 = time.monotonic()
    out = _slam(tmp_path, *command.split(), "--preset", "smok", "--data-root", str(tmp_path / "data"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "slam: error: unknown preset 'smok' — --preset smok — did you mean 'smoke' or 'slam'? "
        "(known: smoke, slam, slam_scaled, slam_large, rehearsal)"]
    assert not (tmp_path / "prefect-home").exists()  # Prefect never started
    assert time.monotonic() - t0 < 60


def test_a_missing_input_named_by_set_is_one_line_before_prefect_starts(tmp_path):
    out = _slam(tmp_path, "run", "reproduce", "--data-root", str(tmp_path / "data"),
                "--set", f"corpus.spokenswag_dir={tmp_path / 'missing'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("slam: error: missing inputs") and "SpokenSwag shards — --set corpus.spokenswag_dir —" in line
    assert "slam synth spokenswag" in line  # the fix
    assert not (tmp_path / "prefect-home").exists() and not (tmp_path / "data" / "catalog.duckdb").exists()


def test_a_missing_local_swag_copy_names_the_field_and_what_to_give(tmp_path, capsys):
    rc = main(["run", "prepare-data", "--data-root", str(tmp_path), "--set", "corpus.source=tinystories",
               "--set", f"corpus.swag_local_dir={tmp_path / 'swag' / 'train.csv'}",
               "--set", f"corpus.tinystories_local_dir={tmp_path}"])
    assert rc == 2
    line = _one_error_line(capsys)
    assert "SWAG text — --set corpus.swag_local_dir —" in line and "train.csv" in line and "rowanz/swagaf" in line


def _read_only_dir() -> Path | None:
    """An existing directory this process cannot write (/sys is read-only in containers), else None."""
    for candidate in (Path("/sys/fs"), Path("/proc/sys")):
        if candidate.is_dir() and not os.access(candidate, os.W_OK):
            return candidate
        if candidate.is_dir():
            try:
                (candidate / ".slam-probe").touch()
                (candidate / ".slam-probe").unlink()
            except OSError:
                return candidate
    return None


def test_a_read_only_data_root_is_one_line(tmp_path, capsys):
    ro = _read_only_dir()
    if ro is None:
        pytest.skip("no read-only directory on this machine")
    for root in (ro, ro / "slam-data"):  # an existing root, and one that would have to be created
        assert main(["run", "reproduce", "--data-root", str(root)]) == 2
        line = _one_error_line(capsys)
        assert f"— {root} — pass --data-root a writable directory" in line
        assert "not writable" in line or "cannot be created" in line


def test_a_read_only_file_system_is_named(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("slam_core.data_root.open", read_only, raising=False)
    with pytest.raises(InputError, match=r"the data root is not writable \(Read-only file system\) — "):
        check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no probe left behind


def test_a_catalog_held_by_another_process_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    db = tmp_path / "catalog.duckdb"
    duckdb.connect(str(db)).close()
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(120)", str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("SLAM_CATALOG_LOCK_WAIT_S", "1")
        assert main(["run", "reproduce", "--data-root", str(tmp_path)]) == 2
        line = _one_error_line(capsys)
        assert f"the catalog is locked by another process, PID {holder.pid}" in line and f"— {db} —" in line
    finally:
        holder.kill()
        holder.wait()
    assert check_data_root(tmp_path) is None  # released: the next run goes on


def test_deployment_wording_names_parameters_not_flags():
    line = ("slam: error: missing inputs, stopped before any work: SpokenSwag shards — --set corpus.spokenswag_dir — "
            "no preferences-*.parquet in /missing: make them with `slam synth spokenswag`")
    assert "--param 'overrides={\"corpus.spokenswag_dir\": …}'" in for_deployment(line)
    assert "--set" not in for_deployment(line)
    assert for_deployment("x — --set train.lr=0.1 — y") == "x — --param 'overrides={\"train.lr\": 0.1}' — y"
    assert for_deployment("x — --set model.base=Qwen/Q — y") == "x — --param 'overrides={\"model.base\": \"Qwen/Q\"}' — y"
    assert for_deployment("unknown preset 'smok' — --preset smok — did you mean") == \
        "unknown preset 'smok' — --param preset=smok — did you mean"
    assert for_deployment("pass --data-root a writable directory") == "pass --param data_root=DIR a writable directory"


def test_a_flow_run_ends_failed_with_the_line(prefect_harness, tmp_path, monkeypatch):
    """The flow itself (as a deployment runs it): Failed, the state's message is the line, no traceback logged;
    from a deployment the line names parameters."""
    from flows import entry
    from flows.reproduce import reproduce

    state = reproduce(preset="smok", data_root=str(tmp_path), return_state=True)
    assert state.is_failed() and state.message.startswith("slam: error: unknown preset 'smok' — --preset smok —")
    monkeypatch.setattr(entry, "_run_context", lambda: (True, True, True))  # as under a worker
    state = reproduce(preset="smoke", overrides={"corpus.spokenswag_dir": str(tmp_path / "missing")},
                      data_root=str(tmp_path), return_state=True)
    assert state.is_failed() and "SpokenSwag shards — --param 'overrides={\"corpus.spokenswag_dir\"" in state.message
    assert "--set" not in state.message
