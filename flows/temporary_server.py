"""The temporary Prefect server of `slam run` (no PREFECT_API_URL): Prefect's own, with SQLite writers in line.

Why the stock temporary server logged `sqlite3.OperationalError: database is locked` on runs that succeeded:
its API handlers and its services (task-run recorder, event persister) each use their own SQLite connection,
and most of their transactions begin DEFERRED. In WAL mode a DEFERRED transaction that has read, and then wants
to write after another connection committed, cannot be given the lock without breaking its snapshot, so SQLite
answers SQLITE_BUSY at once: the 60 s `busy_timeout` does not apply (tests/test_temporary_server.py shows it on
Prefect's own configuration). Prefect retries, so nothing was lost, but the traceback reached the log.

The fix is one writer at a time: every transaction of this server begins IMMEDIATE, taking the write lock before
its first read, so a second writer waits in `busy_timeout` instead of failing. Single statements outside a
transaction were already waiting. Reads outside transactions, which most API reads are, are not affected.
The cost is that transactions queue: fine for one person's temporary server, and Prefect already begins its
state-setting transactions IMMEDIATE (`with_for_update=True`).

`use_one_writer_server()` puts a `OneWriterServer` where Prefect's client looks for its temporary server
(`SubprocessASGIServer()`, a singleton per port), so nothing else changes: Prefect starts it on first use and
stops it at exit. Its uvicorn process builds the app through `create_app` below. A long-lived
server for deployments (PREFECT_API_URL) is not touched here; `slam deploy server` (flows/cli_deploy.py) runs
`prefect server start` in-process with `one_writer_sqlite()`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def one_writer_sqlite() -> None:
    """In this process, make every transaction of Prefect's SQLite configuration begin IMMEDIATE."""
    from prefect.server.database.configurations import SQLITE_BEGIN_MODE, AioSqliteConfiguration

    if getattr(AioSqliteConfiguration.begin_transaction, "one_writer", False):
        return

    @asynccontextmanager
    async def begin_immediate(self: Any, session: Any, with_for_update: bool = False) -> Any:
        token = SQLITE_BEGIN_MODE.set("IMMEDIATE")  # the write lock before the first read, whatever the caller
        try:
            async with session.begin() as transaction:
                yield transaction
        finally:
            SQLITE_BEGIN_MODE.reset(token)

    begin_immediate.one_writer = True  # type: ignore[attr-defined]
    AioSqliteConfiguration.begin_transaction = begin_immediate  # type: ignore[method-assign]


def create_app() -> Any:
    """uvicorn's app factory in the server process: Prefect's temporary-server app with one writer at a time."""
    one_writer_sqlite()
    from prefect.server.api.server import create_app as prefect_create_app

    return prefect_create_app(ephemeral=True, final=True)


def _server_class() -> type:
    from prefect.server.api.server import SubprocessASGIServer

    class OneWriterServer(SubprocessASGIServer):
        """Prefect's temporary server, its app built by `flows.temporary_server:create_app`."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            from prefect.settings import get_current_settings

            env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
                   "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO_ROOT), "--factory",
                 "flows.temporary_server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "error", "--lifespan", "on"], env=env)

    return OneWriterServer


def use_one_writer_server() -> None:
    """Make Prefect's client start a `OneWriterServer` as its temporary server (when PREFECT_API_URL is unset).
    Call before the first flow runs; a temporary server that already started is left as it is."""
    from prefect.server.api.server import SubprocessASGIServer

    current = SubprocessASGIServer._instances.get(None)
    if current is not None and (current.running or type(current).__name__ == "OneWriterServer"):
        return
    cls = _server_class()
    server = object.__new__(cls)
    SubprocessASGIServer._instances[None] = server
    server.__init__()


def one_writer_when_temporary() -> None:
    """`use_one_writer_server()` unless runs go to a configured server (PREFECT_API_URL, in the environment or
    the Prefect profile). Call it right before a flow runs: it imports Prefect's server module, which Prefect's
    client imports anyway to start a temporary server. Nothing under the plain runtime (flows/plain_runtime.py):
    there is no Prefect server there."""
    from flows import plain_runtime

    if plain_runtime.is_installed():
        return
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        use_one_writer_server()
