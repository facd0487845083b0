"""The temporary Prefect server's SQLite lock errors, found and fixed at their cause (flows/temporary_server.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


async def _read_then_write_while_another_commits(db_path: Path) -> tuple[list[BaseException | None], float]:
    """Prefect's pattern: transaction 1 reads, transaction 2 (another connection) writes and commits, then
    transaction 1 writes. Returns each transaction's error (None when it committed) and the seconds taken."""
    import sqlalchemy as sa
    from prefect.server.database.configurations import AioSqliteConfiguration

    config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{db_path}")
    engine = await config.engine()
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    first_read = asyncio.Event()

    async def reader_then_writer() -> None:
        async with config.begin_transaction(await config.session(engine)) as tx:
            await tx.session.execute(sa.text("SELECT count(*) FROM t"))
            first_read.set()
            await asyncio.sleep(0.5)  # the other connection writes and commits meanwhile
            await tx.session.execute(sa.text("INSERT INTO t VALUES (1)"))

    async def writer() -> None:
        await asyncio.wait_for(first_read.wait(), 5.0)
        async with config.begin_transaction(await config.session(engine)) as tx:
            await tx.session.execute(sa.text("INSERT INTO t VALUES (2)"))

    start = time.monotonic()
    errors = await asyncio.gather(reader_then_writer(), writer(), return_exceptions=True)
    await engine.dispose()
    return list(errors), time.monotonic() - start


def _one_writer() -> bool:
    from prefect.server.database.configurations import AioSqliteConfiguration

    return getattr(AioSqliteConfiguration.begin_transaction, "one_writer", False)


def test_deferred_transactions_fail_at_once_and_one_writer_waits(tmp_path, monkeypatch):
    from prefect.server.database.configurations import AioSqliteConfiguration

    from flows.temporary_server import one_writer_sqlite

    # the cause, on Prefect's own configuration: SQLITE_BUSY at once, though busy_timeout is 60 s
    errors, took_s = asyncio.run(_read_then_write_while_another_commits(tmp_path / "stock.db"))
    assert "database is locked" in str(errors[0]) and errors[1] is None and took_s < 10, (errors, took_s)

    monkeypatch.setattr(AioSqliteConfiguration, "begin_transaction", AioSqliteConfiguration.begin_transaction)
    one_writer_sqlite()
    assert _one_writer()
    errors, _ = asyncio.run(_read_then_write_while_another_commits(tmp_path / "fixed.db"))
    assert errors == [None, None]  # the second writer waited for the first instead of failing


@pytest.mark.slow
def test_slam_runs_use_the_one_writer_temporary_server(tmp_path):
    """A flow run with no PREFECT_API_URL starts the one-writer server (its uvicorn builds our app) and completes
    its tasks; a configured server is left alone."""
    script = textwrap.dedent("""
        import os, subprocess
        from flows.temporary_server import one_writer_when_temporary
        one_writer_when_temporary()
        from prefect import flow, task
        from prefect.server.api.server import SubprocessASGIServer

        @task
        def double(x):
            return 2 * x

        @flow
        def many():
            return sum(f.result() for f in [double.submit(i) for i in range(40)])

        print("sum", many())
        server = SubprocessASGIServer._instances[None]
        print("class", type(server).__name__)
        print("args", " ".join(server.server_process.args))
    """)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert lines["sum"] == str(2 * sum(range(40)))
    assert lines["class"] == "OneWriterServer" and "flows.temporary_server:create_app" in lines["args"]
    assert "database is locked" not in out.stderr

    configured = {**env, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    check = subprocess.run([sys.executable, "-c", "from flows.temporary_server import one_writer_when_temporary;"
                            "one_writer_when_temporary();"
                            "from prefect.server.api.server import SubprocessASGIServer as S;"
                            "print(len(S._instances))"], cwd=tmp_path, env=configured, capture_output=True,
                           text=True, timeout=120)
    assert check.stdout.strip() == "0", (check.stdout, check.stderr[-2000:])


def test_quiet_log_drops_shutdown_cancellations_only():
    import logging
    import sqlite3

    from flows.quiet_log import TemporaryServerNoise

    def record(name: str, exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            return logging.LogRecord(name, logging.ERROR, __file__, 1, "Error flushing", None, sys.exc_info())

    noise = TemporaryServerNoise()
    assert not noise.filter(record("prefect.server.services.task_run_recorder", asyncio.CancelledError()))
    assert noise.filter(record("prefect.server.services.task_run_recorder",
                               sqlite3.OperationalError("database is locked")))  # fixed at cause: shown if seen
    assert noise.filter(record("prefect.flow_runs", asyncio.CancelledError()))  # the run's own: kept


def test_plain_runtime_starts_no_server():
    """Under the plain runtime (the GPU host has no Prefect) the hook does nothing and imports no Prefect."""
    script = ("import sys; from flows import plain_runtime; plain_runtime.install();"
              "from flows.temporary_server import one_writer_when_temporary; one_writer_when_temporary();"
              "print(sorted(m for m in sys.modules if m.startswith('prefect.server')))")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr[-2000:])


@pytest.mark.slow
def test_deploy_server_runs_prefects_server_with_one_writer(tmp_path):
    """`slam deploy server`: Prefect's `prefect server start` in the foreground, in-process, with the change; a flow
    run against it completes, and SIGTERM stops it."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "flows.cli", "deploy", "server", "--port", str(port)], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(180):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("slam deploy server did not answer")
        script = ("from prefect import flow, task\n@task\ndef one(x):\n    return x\n"
                  "@flow\ndef f():\n    return sum(t.result() for t in [one.submit(i) for i in range(20)])\nprint(f())")
        run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env={**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"})
        assert run.returncode == 0 and run.stdout.split()[-1] == "190", run.stderr[-2000:]
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=60)
    assert "SQLite transactions one writer at a time" in out and "database is locked" not in out, out[-2000:]
