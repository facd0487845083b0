"""The default log of `slam run` (and `make demo`): what the run did, not how Prefect's client talked.

Without `-v`:
- the HTTP client's per-request INFO lines (`httpx`/`httpcore`: one per API call, over a thousand per demo,
  among them the CSRF-token probe's `422 Unprocessable Entity`, which is the server saying CSRF protection is
  off, not an error) are dropped;
- the temporary server's access log and its INFO lines stay at WARNING, and its retried SQLite lock errors and
  shutdown cancellations are dropped (`TemporaryServerNoise` says why they happen; flows/prefect_logging.yml);
- no per-model progress bars of transformers/huggingface_hub ('Loading weights', 'Writing model shards');
- stage progress is coalesced to one line per 10 % (tasks/common.py, progress_reporter).
With `-v` everything is shown at DEBUG, as before.
"""

from __future__ import annotations

import logging
import os

NOISY = ("httpx", "httpcore", "hpack", "urllib3", "uvicorn.access", "docket", "aiosqlite", "asyncio", "faiss.loader")


class _DropClientChatter(logging.Filter):
    """Drop the HTTP client's request lines wherever they are handled (Prefect attaches its own handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith(("httpx", "httpcore")) and record.levelno < logging.WARNING)


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


class TemporaryServerNoise(logging.Filter):
    """Drop two kinds of ERROR records of the temporary Prefect server (not the run's own errors):

    - SQLite `database is locked` / SQLITE_BUSY in its services. Why it happens: the temporary server runs the
      task-run recorder and event persister beside the API, each on its own SQLite connection; WAL admits one
      writer at a time, and a transaction that read first and then wants to write while another connection
      writes gets SQLITE_BUSY at once (SQLite cannot wait there without risking a deadlock, so busy_timeout,
      60 s in Prefect, does not apply). The service says "N to retry, 0 dropped" and retries; Prefect already
      hides the same error from its API log as retryable (`server.log_retryable_errors`), not from its services.
    - `CancelledError` tracebacks while the temporary server stops at the end of the run: `slam` is done and
      the server cancels the services' last flush of its own bookkeeping (task-run state events).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.exc_info:
            return True
        if not record.name.startswith(("prefect.server", "sqlalchemy", "uvicorn", "docket")):
            return True
        import asyncio
        import sqlite3

        for exc in _chain(record.exc_info[1]):
            if isinstance(exc, asyncio.CancelledError):
                return False
            text = str(exc).lower()
            if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
                return False
            if type(exc).__name__ == "OperationalError" and "database is locked" in text:
                return False
        return True


def quiet_logging(verbose: bool = False) -> None:
    """Set the levels (and the Prefect logging settings, read when Prefect is imported) described above."""
    if verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "DEBUG")
        return
    from pathlib import Path

    os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(Path(__file__).with_name("prefect_logging.yml")))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' 'Loading weights' bars too
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_INTERNAL_LEVEL", "ERROR")
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    drop = _DropClientChatter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(drop)
