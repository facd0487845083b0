"""Run slam's flows without Prefect: for hosts that cannot carry Prefect and its server stack (an offline GPU
node with torch and transformers but a 64 MiB limit on what can be brought along).

Prefect 3 has no mode without an API server, so `install()` registers a small module named `prefect` that
gives the few names slam's flows and tasks use (`flow`, `task`, `.submit`, `.result`, `.fn`, `with_options`,
the task runner, the context getters and the artifact functions). Under it:

- a flow is its plain function; a task runs when submitted, in the calling thread, in submission order, with
  the task's `retries` and `retry_delay_seconds`; an exception surfaces at `.result()`, as with Prefect;
- no Prefect result cache and no artifacts (progress goes to the log). Each stage task still checks the
  catalog before working, so finished shards and checkpoints are reused and a killed run resumes;
- the code that runs is the flows' and tasks' own: same order, same fingerprints, same catalog records.

Call `install()` before anything imports `flows.*` or `tasks.*`; it refuses once the real Prefect is imported.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
import types
import uuid
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
MARKER = "__slam_plain_runtime__"


class PlainFuture:
    """A finished task run: its value, or the exception it raised (raised again by `result()`)."""

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        if self._error is not None and raise_on_failure:
            raise self._error
        return self._value if self._error is None else self._error

    def wait(self, timeout: float | None = None) -> None:
        return None


class PlainTask:
    """A task: calling it runs the function (with retries); `submit` runs it now and returns a PlainFuture."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None, retries: int = 0,
                 retry_delay_seconds: float | list[float] = 0, **_ignored: Any) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.name = fn, name or fn.__name__
        self.retries = int(retries or 0)
        # one delay for every retry, or a list (back-off): the k-th retry waits the k-th (or last) entry
        delays = retry_delay_seconds if isinstance(retry_delay_seconds, (list, tuple)) else [retry_delay_seconds]
        self.retry_delays = [float(d or 0) for d in delays] or [0.0]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return self.fn(*args, **kwargs)
            except Exception as err:  # Prefect retries any exception a task raises
                if attempt == self.retries:
                    raise
                log.warning("task %s failed (%s: %s); retry %d of %d", self.name, type(err).__name__, err,
                            attempt + 1, self.retries)
                time.sleep(self.retry_delays[min(attempt, len(self.retry_delays) - 1)])
        raise AssertionError("unreachable")

    def submit(self, *args: Any, **kwargs: Any) -> PlainFuture:
        try:
            return PlainFuture(self(*args, **kwargs))
        except Exception as err:
            return PlainFuture(error=err)

    def with_options(self, **kwargs: Any) -> "PlainTask":
        return self


_RUNNING: list[tuple[str, str]] = []  # (run id, flow name) of the plain flows being called, outermost first


class PlainFlow:
    """A flow: calling it calls the function (a flow called inside another is its subflow, as in Prefect)."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None, **_ignored: Any) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.name = fn, name or fn.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        log.info("flow %s (plain runtime)", self.name)
        _RUNNING.append((str(uuid.uuid4()), self.name))
        try:
            return self.fn(*args, **kwargs)
        finally:
            _RUNNING.pop()

    def with_options(self, **kwargs: Any) -> "PlainFlow":
        return self


def _decorator(cls: type) -> Callable[..., Any]:
    def decorate(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
        if fn is not None:
            return cls(fn, **options)
        return lambda f: cls(f, **options)
    return decorate


class ThreadPoolTaskRunner:
    """Accepted for the flows' decorators; tasks run in the calling thread under the plain runtime."""

    def __init__(self, max_workers: int | None = None, **_ignored: Any) -> None:
        self.max_workers = max_workers


class _NoContext:
    @classmethod
    def get(cls) -> None:
        return None


class _FlowRunInfo:
    """`prefect.runtime.flow_run`: the running plain flow's id and name, and its parent's id (None at the top)."""

    @property
    def id(self) -> str | None:
        return _RUNNING[-1][0] if _RUNNING else None

    @property
    def flow_name(self) -> str | None:
        return _RUNNING[-1][1] if _RUNNING else None

    name = flow_name

    @property
    def parent_flow_run_id(self) -> str | None:
        return _RUNNING[-2][0] if len(_RUNNING) > 1 else None


def _no_artifact(*args: Any, **kwargs: Any) -> None:
    return None


def is_installed() -> bool:
    return getattr(sys.modules.get("prefect"), MARKER, False)


def install() -> None:
    """Register the plain `prefect` module (idempotent); RuntimeError when the real Prefect is loaded."""
    if is_installed():
        return
    if sys.modules.get("prefect") is not None or any(m.startswith("tasks.") for m in sys.modules):
        raise RuntimeError("plain runtime: Prefect (or a task module) is already imported; install it first")
    root = types.ModuleType("prefect", "slam's plain runtime (flows/plain_runtime.py), not Prefect")
    setattr(root, MARKER, True)
    root.flow, root.task = _decorator(PlainFlow), _decorator(PlainTask)
    runners = types.ModuleType("prefect.task_runners")
    runners.ThreadPoolTaskRunner = ThreadPoolTaskRunner
    context = types.ModuleType("prefect.context")
    context.FlowRunContext, context.TaskRunContext = _NoContext, _NoContext
    artifacts = types.ModuleType("prefect.artifacts")
    for name in ("create_progress_artifact", "update_progress_artifact", "create_link_artifact",
                 "create_markdown_artifact", "create_table_artifact"):
        setattr(artifacts, name, _no_artifact)
    runtime = types.ModuleType("prefect.runtime")
    runtime.flow_run = _FlowRunInfo()
    # flows.entry reaches these only inside a Prefect flow run (never here): names, so its imports resolve
    run_logging = types.ModuleType("prefect.logging")
    run_logging.get_run_logger = lambda: log
    states = types.ModuleType("prefect.states")
    states.Failed = lambda message="", **_: RuntimeError(message)
    root.task_runners, root.context, root.artifacts, root.runtime = runners, context, artifacts, runtime
    root.logging, root.states = run_logging, states
    sys.modules.update({"prefect": root, "prefect.task_runners": runners, "prefect.context": context,
                        "prefect.artifacts": artifacts, "prefect.runtime": runtime, "prefect.logging": run_logging,
                        "prefect.states": states})
    log.info("plain runtime installed: flows run as plain functions, without a Prefect server")


def prefect_available() -> bool:
    """Whether the real Prefect (with the server it needs for flow runs) can be imported here."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("prefect", "uvicorn", "sqlalchemy", "aiosqlite"))
