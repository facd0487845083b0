"""The default log of `slam run` (and `make demo`): what the run did, not how Prefect's client talked.

Without `-v`:
- the HTTP client's per-request INFO lines (`httpx`/`httpcore`: one per API call, over a thousand per demo,
  among them the CSRF-token probe's `422 Unprocessable Entity`, which is the server saying CSRF protection is
  off, not an error) are dropped;
- the temporary server's access log and its INFO lines stay at WARNING, and its shutdown cancellations are
  dropped (`TemporaryServerNoise` says why they happen; flows/prefect_logging.yml); its SQLite lock errors are
  fixed at their cause (flows/temporary_server.py);
- no per-model progress bars of transformers/huggingface_hub ('Loading weights', 'Writing model shards');
- stage progress is coalesced to one line per 10 %, and its Prefect artifact to one update per 5 % or 30 s
  (tasks/common.py, progress_reporter).
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
    """Drop the temporary Prefect server's `CancelledError` tracebacks while it stops at the end of a run (not the
    run's own errors): `slam` is done and the server cancels its services' last flush of their own bookkeeping
    (task-run state events), which Prefect logs at ERROR.

    Its SQLite `database is locked` errors are not filtered: they are fixed at their cause
    (flows/temporary_server.py, one writer at a time), so one that still shows is worth seeing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.exc_info:
            return True
        if not record.name.startswith(("prefect.server", "sqlalchemy", "uvicorn", "docket")):
            return True
        import asyncio

        return not any(isinstance(exc, asyncio.CancelledError) for exc in _chain(record.exc_info[1]))


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
