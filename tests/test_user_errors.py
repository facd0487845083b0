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
from slam_core.presets import PRESETS
from test_bad_input_cli import _one_error_line  # one helper for every CLI error test

REPO = Path(__file__).resolve().parents[1]


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
        f"(known: {', '.join(PRESETS)})"]
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
    suggested = "make them with `slam synth spokenswag --input SWAG_DIR --preset smoke` first"
    assert for_deployment(f"x — --preset smoke — {suggested}") == f"x — --param preset=smoke — {suggested}"
    assert for_deployment("rerun `slam run reproduce --preset smoke`") == "rerun `a deployment run of reproduce --param preset=smoke`"


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


def test_catalog_summary_titles_are_whole_on_an_empty_catalog(tmp_path, capsys):
    from data_catalog import Catalog

    Catalog(tmp_path / "catalog.duckdb")
    assert main(["catalog", "summary", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Quarantined inputs" in out and " d inputs " not in out


def _catalog_with_one_row(root: Path) -> Path:
    from data_catalog import Artifact, Catalog

    shard = root / "units" / "a.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"PAR1 pretend")
    Catalog(root / "catalog.duckdb").record_artifact(Artifact("units", "d", "train", str(shard), "fp1"))
    return shard


def test_a_corrupt_catalog_is_moved_aside_and_its_last_good_copy_restored(tmp_path):
    from data_catalog import Catalog

    shard = _catalog_with_one_row(tmp_path)
    assert check_data_root(tmp_path) is None  # a good catalog: its copy is taken
    db = tmp_path / "catalog.duckdb"
    corrupt = os.urandom(db.stat().st_size)
    db.write_bytes(corrupt)
    note = check_data_root(tmp_path)
    assert note is not None and note.startswith("catalog was corrupt (") and "restored its last good copy" in note
    moved = list(tmp_path.glob("catalog.duckdb.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == corrupt  # kept, never deleted
    assert Catalog(db).find_artifact(shard, "fp1") is not None  # nothing recorded before the copy is lost
    db.write_bytes(b"")  # a truncated-to-nothing file, with a good copy again
    assert "restored" in check_data_root(tmp_path)


def test_a_corrupt_catalog_without_a_copy_becomes_a_new_one(tmp_path):
    from data_catalog import Catalog

    (tmp_path / "catalog.duckdb").write_bytes(b"not a database at all" * 100)
    note = check_data_root(tmp_path)
    assert "no good copy existed: a new catalog, every output is redone" in note
    assert Catalog(tmp_path / "catalog.duckdb").artifacts() == []


def test_training_that_meets_a_bad_shard_ends_in_one_line_and_forgets_the_shard(tmp_path):
    from data_catalog import Catalog
    from flows.cli_common import error_line
    from slam_core.lm.data import BadShardError
    from tasks.train import shards_checked

    shard = _catalog_with_one_row(tmp_path)
    with pytest.raises(InputError) as info:
        with shards_checked(str(tmp_path)):
            raise BadShardError(f"{shard}: cannot read Parquet metadata (truncated file)")
    line = error_line(info.value)
    assert line == (f"slam: error: training met a units shard it cannot read (cannot read Parquet metadata (truncated "
                    f"file)) — {shard} — rerun the same command: its catalog row was dropped, so the shard is made "
                    f"again from its source")
    assert Catalog(tmp_path / "catalog.duckdb").find_artifact(shard, "fp1") is None  # the next run remakes it


def test_a_swag_csv_row_that_is_not_utf8_is_quarantined_with_its_line(tmp_path):
    from slam_core.corpora import text_hub

    header = "video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label\n"
    row = 'v{0},{0},x,"Someone walks to door number {0}.",He,gold,opens it.,eats a cake.,flies away.,sings.,0\n'
    latin1 = 'v9,9,x,"Caf\xe9 owner smiles.",She,gold,opens it.,eats.,flies.,sings.,0\n'.encode("latin-1")
    csv_path = tmp_path / "train.csv"
    csv_path.write_bytes((header + row.format(0) + row.format(1)).encode() + latin1 + (row.format(2)).encode())
    out = text_hub.prepare_swag(csv_path, tmp_path / "triples.parquet", seed=0)
    assert out["per_split"] == {"train": 3}  # the good rows go on
    assert [q["path"] for q in out["quarantined"]] == [f"{csv_path}:4"] and out["quarantined"][0]["reason"] == "not_utf8"


@pytest.mark.slow
def test_sigterm_stops_a_run_with_one_line_and_the_next_run_resumes(tmp_path):
    """`slam run prepare-data` gets SIGTERM once its first output is recorded: one line, exit 143, no traceback;
    the committed outputs stay, and the next run reuses them."""
    import signal

    from data_catalog import Catalog

    root = tmp_path / "data"
    argv = ["run", "prepare-data", "--data-root", str(root), "--set", "corpus.n_train_stories=12",
            "--set", "corpus.n_heldout_stories=4", "--set", "corpus.n_swag_train=4", "--set", "corpus.n_swag_heldout=4"]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            db = root / "catalog.duckdb"
            try:
                if db.exists() and len(Catalog(db, lock_timeout_s=1).artifacts()) >= 2:
                    break
            except Exception:  # the run holds the catalog this instant
                pass
            time.sleep(1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-2000:]
    assert "slam: stopped by SIGTERM — " in err and "Traceback" not in err, err[-3000:]
    kept = {r["path"]: os.stat(r["path"]).st_mtime_ns for r in Catalog(root / "catalog.duckdb").artifacts()}
    assert len(kept) >= 2
    # the same flow again, on the plain runtime (no second Prefect server start)
    resume = subprocess.run([sys.executable, "-c", (
        "import json, sys; from flows import plain_runtime; plain_runtime.install()\n"
        "from flows.prepare_data import prepare_data\n"
        "from flows.cli_common import parse_overrides\n"
        "out = prepare_data(preset='smoke', overrides=parse_overrides(sys.argv[2:]), data_root=sys.argv[1])\n"
        "print('SHARDS', json.dumps(out['shards']))"), str(root), *argv[5::2]], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=900)
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert set(kept) <= {r["path"] for r in Catalog(root / "catalog.duckdb").artifacts()}
    assert {p: os.stat(p).st_mtime_ns for p in kept} == kept  # what was committed before SIGTERM was reused as is
