"""The default log of `slam run` (and `make demo`): what the run did, not how Prefect's client talked.

Without `-v`:
- the HTTP client's per-request INFO lines (`httpx`/`httpcore`: one per API call, over a thousand per demo,
  among them the CSRF-token probe's `422 Unprocessable Entity`, which is the server saying CSRF protection is
  off, not an error) are dropped;
- the temporary server's access log and its INFO lines stay at WARNING;
- no per-model progress bars of transformers/huggingface_hub ('Loading weights', 'Writing model shards');
- stage progress is coalesced to one line per 10 % (tasks/common.py, progress_reporter).
With `-v` everything is shown at DEBUG, as before.
"""

from __future__ import annotations

import logging
import os

NOISY = ("httpx", "httpcore", "hpack", "urllib3", "uvicorn.access", "docket", "aiosqlite", "asyncio")


class _DropClientChatter(logging.Filter):
    """Drop the HTTP client's request lines wherever they are handled (Prefect attaches its own handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith(("httpx", "httpcore")) and record.levelno < logging.WARNING)


def quiet_logging(verbose: bool = False) -> None:
    """Set the levels (and the Prefect logging settings, read when Prefect is imported) described above."""
    if verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "DEBUG")
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' 'Loading weights' bars too
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_INTERNAL_LEVEL", "ERROR")
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    drop = _DropClientChatter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(drop)
