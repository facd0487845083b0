"""The bad-input suite's orchestration cases (scripts/bad_input_suite.py runs them as the 'orchestration' group).

Mistakes around a run rather than in its data, each through the real flows (the plain runtime of
flows/plain_runtime.py, so no Prefect server start per run; the SIGTERM case uses `slam run` itself). Each must
end in one clear line (or a quarantine), lose nothing that was done, and the next run must recover:
- two runs on one data root at once: both finish, every output is made once and recorded once;
- a catalog file overwritten with random bytes: moved aside, its last good copy restored, nothing redone;
- a units shard truncated behind the catalog, met by training: one line naming it; the next run remakes it;
- a full disk during a shard write (simulated: the fsync that commits the first recordings shard fails with
  ENOSPC, as a full disk with delayed allocation does): one line, nothing half-written recorded, and the next
  run reuses what was finished before;
- a run stopped by SIGTERM: one line, exit 143, committed outputs kept and reused as they are.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TINY = ["corpus.n_train_stories=12", "corpus.n_heldout_stories=4", "corpus.n_swag_train=4", "corpus.n_swag_heldout=4",
        "train.max_steps=2", "dpo.max_steps=1"]
Row = dict[str, Any]

_CHILD = """
import errno, json, os, sys
from flows import plain_runtime
plain_runtime.install()
from flows.cli_common import error_line, parse_overrides
action, root, full_at, *sets = sys.argv[1:]
if full_at != "-":  # the disk fills while this file is committed
    real_fsync = os.fsync
    def fsync(fd):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if full_at in name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)
    os.fsync = fsync
try:
    if action == "prepare":
        from flows.prepare_data import prepare_data
        out = prepare_data(preset="smoke", overrides=parse_overrides(sets), data_root=root)
        open(root + "/prepared.json", "w").write(json.dumps(out, default=str))
        print("RESULT " + json.dumps({"shards": out["shards"]}))
    else:
        from flows.train_lm import train_lm
        prepared = json.loads(open(root + "/prepared.json").read())
        train_lm(preset="smoke", overrides=parse_overrides(sets), data_root=root, prepared=prepared)
        print("RESULT {}")
except Exception as err:
    line = error_line(err)
    if line is None:
        raise
    print(line, file=sys.stderr)
    sys.exit(2)
"""


def _row(name: str, handled_as: str, ok: bool, detail: str = "") -> Row:
    return {"input": name, "handled_as": handled_as, "segments": "", "ok": bool(ok), "detail": detail}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _start(action: str, root: Path, full_at: str = "-") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD, action, str(root), full_at, *TINY], cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 1800) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=timeout)
    result = next((json.loads(ln[7:]) for ln in out.splitlines() if ln.startswith("RESULT ")), {})
    return proc.returncode, result, err


def _run(action: str, root: Path, full_at: str = "-") -> tuple[int, dict[str, Any], str]:
    return _finish(_start(action, root, full_at))


def _redone(shards: dict[str, dict[str, int]]) -> int:
    return sum(v["redone"] for v in shards.values())


def _line(err: str) -> str:
    return next((ln for ln in err.splitlines() if ln.startswith("slam: ")), err.strip()[-160:])


def _recorded(root: Path) -> dict[str, int]:
    from data_catalog import Catalog

    return {r["path"]: os.stat(r["path"]).st_mtime_ns for r in Catalog(root / "catalog.duckdb").artifacts()
            if Path(r["path"]).exists()}


def concurrent_and_corrupt(work: Path) -> list[Row]:
    """Two runs at once; then a third; then a corrupt catalog; then a truncated shard met by training."""
    from data_catalog import Catalog

    root = work / "shared-root"
    first, second = _start("prepare", root), _start("prepare", root)
    (rc1, out1, err1), (rc2, out2, err2) = _finish(first), _finish(second)
    rows = Catalog(root / "catalog.duckdb").artifacts()
    keys = [(r["path"], r["fingerprint"]) for r in rows]
    shards = sum(v["reused"] + v["redone"] for v in out1.get("shards", {}).values())
    made_once = _redone(out1.get("shards", {})) + _redone(out2.get("shards", {})) == shards
    ok = rc1 == rc2 == 0 and len(keys) == len(set(keys)) and made_once and shards > 0 and bool(out2.get("shards"))
    out = [_row("two runs on one data root at once", "both finished, each output made once" if ok else
                f"exit {rc1}/{rc2}", ok, _line(err1 + err2) if not ok else f"{shards} shards, {len(rows)} rows")]
    before = _recorded(root)
    rc, again, err = _run("prepare", root)
    ok = rc == 0 and _redone(again.get("shards", {})) == 0 and _recorded(root) == before
    out.append(_row("(next run) after the two", "all reused" if ok else f"exit {rc}", ok, _line(err) if not ok else ""))

    db = root / "catalog.duckdb"
    db.write_bytes(os.urandom(db.stat().st_size))
    rc, again, err = _run("prepare", root)
    ok = rc == 0 and "catalog was corrupt" in err and _redone(again.get("shards", {})) == 0 and _recorded(root) == before
    out.append(_row("catalog file overwritten with random bytes", "restored, nothing redone" if ok else f"exit {rc}",
                    ok, _line(err) if not ok else next(ln for ln in err.splitlines() if "catalog was corrupt" in ln)[:120]))

    prepared = json.loads((root / "prepared.json").read_text())
    shard = Path(prepared["unit_shards"][0])
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    rc, _, err = _run("train", root)
    line = _line(err)
    ok = rc == 2 and "Traceback" not in err and "training met a units shard it cannot read" in line and str(shard) in line
    out.append(_row("units shard truncated, met by training", "one line" if ok else f"exit {rc}", ok, line[:160]))
    rc, again, err = _run("prepare", root)
    import pyarrow.parquet as pq

    try:
        rows_now, why = pq.ParquetFile(str(shard)).metadata.num_rows, ""
    except Exception as exc:  # still unreadable
        rows_now, why = 0, f"{type(exc).__name__}: {exc}"
    redone = _redone(again.get("shards", {}))
    ok = rc == 0 and rows_now > 0 and str(shard) in _recorded(root)  # whole again, and recorded as such
    out.append(_row("(next run) after the truncated shard", "shard remade" if ok else f"exit {rc}", ok,
                    f"{redone} shard(s) redone, {rows_now} rows in {shard.name} {why}"[:160]))
    return out


def full_disk(work: Path) -> list[Row]:
    root = work / "full-disk-root"
    rc, _, err = _run("prepare", root, full_at="recordings-00000.parquet")  # after the text corpus is recorded
    line = _line(err)
    done = _recorded(root)
    leftovers = [p for p in root.rglob(".*") if p.is_file() and ".tmp" in p.name]
    ok = rc == 2 and "Traceback" not in err and "Nothing was recorded" in line and bool(done) and not leftovers
    rows = [_row("full disk during a shard write", "one line, nothing half-written" if ok else f"exit {rc}", ok,
                 line[:160])]
    rc, _, err = _run("prepare", root)
    ok = rc == 0 and all(_recorded(root).get(p) == t for p, t in done.items())
    rows.append(_row("(next run) after the full disk", "finished, earlier outputs reused" if ok else f"exit {rc}", ok,
                     _line(err) if not ok else f"{len(done)} outputs kept"))
    return rows


def sigterm(work: Path) -> list[Row]:
    root = work / "sigterm-root"
    argv = ["run", "prepare-data", "--data-root", str(root)] + [a for s in TINY for a in ("--set", s)]
    env = {**_env(), "PREFECT_HOME": str(work / "prefect-home")}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if (root / "catalog.duckdb").exists() and len(_recorded(root)) >= 2:
                break
        except Exception:  # the run holds the catalog this instant
            pass
        time.sleep(1)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    kept = _recorded(root)
    ok = proc.returncode == 143 and "slam: stopped by SIGTERM" in err and "Traceback" not in err and len(kept) >= 2
    rows = [_row("run stopped by SIGTERM", "one line, exit 143" if ok else f"exit {proc.returncode}", ok,
                 _line(err)[:160])]
    rc, _, err = _run("prepare", root)
    ok = rc == 0 and all(_recorded(root).get(p) == t for p, t in kept.items())
    rows.append(_row("(next run) after SIGTERM", "finished, committed outputs reused" if ok else f"exit {rc}", ok,
                     _line(err) if not ok else f"{len(kept)} outputs kept"))
    return rows


def run_orchestration(work: Path) -> tuple[list[Row], list[str]]:
    work.mkdir(parents=True, exist_ok=True)
    rows = concurrent_and_corrupt(work) + full_disk(work) + sigterm(work)
    return rows, [f"{r['input']}: {r['handled_as']} ({r['detail']})" for r in rows if not r["ok"]]
