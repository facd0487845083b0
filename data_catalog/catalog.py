"""The DuckDB catalog: the record of every artifact, quarantined input and evaluation result.

A row in `artifacts` is the commit of a shard: stages write the file atomically first and record it
second, so a crash between the two leaves a file without a row (redone on resume), never a row
without a complete file. A row also keeps the identity of the bytes it recorded (size, sha256, stat signature;
`data_catalog.identity`): a file rewritten since, by another config writing the same path or by hand, is
reported and redone, never served. Writers from several threads or processes are serialised: a process-wide
lock plus retries while another process holds DuckDB's file lock (DuckDB admits one writing process at a
time); an artifact and its quarantine rows are committed in one transaction (`record_output`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from data_catalog.identity import identity_of, mismatch

SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    stage VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    fingerprint VARCHAR NOT NULL,
    rows BIGINT,
    tokens BIGINT,
    audio_seconds DOUBLE,
    bytes BIGINT,
    upstream VARCHAR,
    created_at TIMESTAMPTZ NOT NULL,
    sha256 VARCHAR,
    stat_sig VARCHAR,
    PRIMARY KEY (path, fingerprint)
);
-- catalogs written before content identities were recorded gain the columns (their rows are checked by size)
ALTER TABLE artifacts ADD COLUMN IF NOT EXISTS sha256 VARCHAR;
ALTER TABLE artifacts ADD COLUMN IF NOT EXISTS stat_sig VARCHAR;
CREATE TABLE IF NOT EXISTS quarantine (
    stage VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    detail VARCHAR,
    fingerprint VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (stage, path, fingerprint)
);
CREATE TABLE IF NOT EXISTS eval_results (
    run VARCHAR NOT NULL,
    checkpoint VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE,
    n BIGINT,
    ci_low DOUBLE,
    ci_high DOUBLE,
    details VARCHAR,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run, checkpoint, metric)
);
CREATE TABLE IF NOT EXISTS runs (
    run VARCHAR NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    config VARCHAR NOT NULL,
    PRIMARY KEY (run, started_at)
);
"""

log = logging.getLogger(__name__)
_PROCESS_LOCK = threading.RLock()


@dataclass(frozen=True)
class Artifact:
    stage: str
    dataset: str
    split: str
    path: str
    fingerprint: str
    rows: int = 0
    tokens: int = 0
    audio_seconds: float = 0.0
    bytes: int = 0
    upstream: tuple[str, ...] = ()


_INSERT_QUARANTINE = "INSERT OR REPLACE INTO quarantine VALUES (?,?,?,?,?,?,?)"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Catalog:
    """Thin, safe access to `catalog.duckdb`; every method opens, works and closes."""

    def __init__(self, path: str | Path, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as con:
            con.execute(SCHEMA)

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.lock_timeout_s
        with _PROCESS_LOCK:
            while True:
                try:
                    con = duckdb.connect(str(self.path))
                    break
                except duckdb.IOException as err:  # another process holds the file lock
                    if "lock" not in str(err).lower() or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            try:
                yield con
            finally:
                con.close()

    # ---- artifacts -------------------------------------------------------------------------
    def record_artifact(self, art: Artifact) -> None:
        """Record a complete file. The file must already be in its final place."""
        self.record_output(art)

    def record_output(self, art: Artifact, quarantine: list[tuple[str, str, str, str, str, str]] = ()) -> None:
        """Record a complete file and the inputs quarantined while producing it, in one transaction: a crash
        leaves both or neither. quarantine rows: (stage, dataset, path, reason, detail, fingerprint)."""
        if not Path(art.path).exists():
            raise FileNotFoundError(f"refusing to record missing artifact {art.path}")
        ident, now = identity_of(art.path), _now()
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                for stage, dataset, path, reason, detail, fingerprint in quarantine:
                    con.execute(_INSERT_QUARANTINE, [stage, dataset, str(path), reason, detail, fingerprint, now])
                # rows of other configs that wrote this path before now point at bytes they did not record
                displaced = con.execute(
                    "DELETE FROM artifacts WHERE path = ? AND fingerprint <> ? AND sha256 IS DISTINCT FROM ? "
                    "RETURNING fingerprint", [str(art.path), art.fingerprint, ident.sha256]).fetchall()
                con.execute(
                    "INSERT OR REPLACE INTO artifacts (stage, dataset, split, path, fingerprint, rows, tokens, "
                    "audio_seconds, bytes, upstream, created_at, sha256, stat_sig) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [art.stage, art.dataset, art.split, str(art.path), art.fingerprint, art.rows, art.tokens,
                     art.audio_seconds, ident.bytes, json.dumps(list(art.upstream)), now, ident.sha256,
                     ident.stat_sig],
                )
                con.execute("COMMIT")
                for (old_fp,) in displaced:
                    log.warning("%s was rewritten by fingerprint %s: its row for %s is dropped (redone if needed)",
                                art.path, art.fingerprint, old_fp)
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def find_artifact(self, path: str | Path, fingerprint: str) -> dict[str, Any] | None:
        """The recorded row for (path, fingerprint) if its file still holds the bytes recorded, else None.

        Bytes that differ from the record (size, or sha256 when the stat signature changed: another config or a
        person rewrote the path) are reported and the row is dropped, so the caller produces the output again."""
        with self.connect() as con:
            row = con.execute(
                "SELECT * FROM artifacts WHERE path = ? AND fingerprint = ?", [str(path), fingerprint]
            ).fetchone()
            cols = [d[0] for d in con.description] if row else []
        if row is None or not Path(path).exists():
            return None
        found = dict(zip(cols, row))
        if self._stale(found):
            return None
        return found

    def _stale(self, row: dict[str, Any]) -> bool:
        """Whether a row's file no longer holds the bytes recorded; a stale row is reported and deleted."""
        why = mismatch(row["path"], row.get("bytes"), row.get("sha256"), row.get("stat_sig"))
        if why is None:
            return False
        log.warning("catalog: %s is not what fingerprint %s recorded (%s): not reused, it will be redone",
                    row["path"], row["fingerprint"], why)
        with self.connect() as con:
            con.execute("DELETE FROM artifacts WHERE path = ? AND fingerprint = ?", [row["path"], row["fingerprint"]])
        return True

    def has_fingerprint(self, fingerprint: str) -> bool:
        """Whether work with this fingerprint is committed here: an artifact whose file still exists, or an
        evaluation result recorded under it."""
        with self.connect() as con:
            cur = con.execute("SELECT * FROM artifacts WHERE fingerprint = ?", [fingerprint])
            cols = [d[0] for d in cur.description]
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
            evals = con.execute("SELECT count(*) FROM eval_results WHERE json_extract_string(details, '$.fingerprint') = ?",
                                [fingerprint]).fetchone()[0]
        return evals > 0 or (bool(rows) and all(Path(r["path"]).exists() and not self._stale(r) for r in rows))

    def forget_path(self, path: str | Path) -> int:
        """Drop every row recorded for `path` (its bytes are known to be bad): the next run produces it again.
        Returns how many rows were dropped."""
        with self.connect() as con:
            return len(con.execute("DELETE FROM artifacts WHERE path = ? RETURNING fingerprint",
                                   [str(path)]).fetchall())

    def artifacts(self, stage: str | None = None, fingerprint: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM artifacts WHERE 1=1", []
        if stage:
            query, args = query + " AND stage = ?", args + [stage]
        if fingerprint:
            query, args = query + " AND fingerprint = ?", args + [fingerprint]
        return self._dicts(query + " ORDER BY path", args)

    # ---- quarantine ------------------------------------------------------------------------
    def record_quarantine(self, stage: str, dataset: str, path: str, reason: str, detail: str, fingerprint: str) -> None:
        with self.connect() as con:
            con.execute(_INSERT_QUARANTINE, [stage, dataset, str(path), reason, detail, fingerprint, _now()])

    def quarantined(self, stage: str | None = None) -> list[dict[str, Any]]:
        if stage:
            return self._dicts("SELECT * FROM quarantine WHERE stage = ? ORDER BY path", [stage])
        return self._dicts("SELECT * FROM quarantine ORDER BY stage, path", [])

    # ---- evaluation ------------------------------------------------------------------------
    def record_eval(self, run: str, checkpoint: str, metric: str, value: float, n: int,
                    ci_low: float | None = None, ci_high: float | None = None,
                    details: dict[str, Any] | None = None) -> None:
        with self.connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO eval_results VALUES (?,?,?,?,?,?,?,?,?)",
                [run, str(checkpoint), metric, value, n, ci_low, ci_high, json.dumps(details or {}), _now()],
            )

    def eval_results(self, run: str | None = None, checkpoint: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM eval_results WHERE 1=1", []
        if run:
            query, args = query + " AND run = ?", args + [run]
        if checkpoint:
            query, args = query + " AND checkpoint = ?", args + [str(checkpoint)]
        return self._dicts(query + " ORDER BY run, checkpoint, metric", args)

    def record_run(self, run: str, config: dict[str, Any]) -> None:
        with self.connect() as con:
            con.execute("INSERT INTO runs VALUES (?,?,?)", [run, _now(), json.dumps(config, sort_keys=True)])

    # ---- summaries -------------------------------------------------------------------------
    def summary(self) -> dict[str, list[dict[str, Any]]]:
        """Hours and tokens per stage/dataset/split, quarantine counts, latest eval results."""
        data = self._dicts(
            """SELECT stage, dataset, split, count(*) AS shards, sum(rows) AS rows, sum(tokens) AS tokens,
                      round(sum(audio_seconds) / 3600.0, 4) AS hours
               FROM artifacts GROUP BY stage, dataset, split ORDER BY stage, dataset, split""", [])
        quarantine = self._dicts(
            "SELECT stage, reason, count(*) AS files FROM quarantine GROUP BY stage, reason ORDER BY stage, reason", [])
        evals = self._dicts(
            """SELECT run, checkpoint, metric, value, n, ci_low, ci_high, created_at FROM eval_results
               QUALIFY row_number() OVER (PARTITION BY run, metric ORDER BY created_at DESC) = 1
               ORDER BY run, metric""", [])
        return {"data": data, "quarantine": quarantine, "eval": evals}

    def _dicts(self, query: str, args: list[Any]) -> list[dict[str, Any]]:
        with self.connect() as con:
            cur = con.execute(query, args)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]


def read_only_totals(path: str | Path) -> list[dict[str, Any]]:
    """Shards, rows, tokens, hours and bytes per (stage, dataset, split), read without writing anything (no schema
    creation, no lock, no directory): for `slam plan`. Empty when there is no catalog yet."""
    if not Path(path).is_file():
        return []
    con = duckdb.connect(str(path), read_only=True)
    try:
        cur = con.execute(
            """SELECT stage, dataset, split, count(*) AS shards, sum(rows) AS rows, sum(tokens) AS tokens,
                      sum(audio_seconds) / 3600.0 AS hours, sum(bytes) AS bytes
               FROM artifacts GROUP BY stage, dataset, split ORDER BY stage, dataset, split""")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        con.close()
