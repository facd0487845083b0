"""How a flow run started by a person ends on a user error: one line, not a traceback.

`@user_facing` sits under `@flow` on every flow a person (or a deployment) starts. When the flow is the run's
root and a user error escapes it (a bad preset, a read-only data root, a locked catalog, a missing input, a
corrupt shard met by training: anything `flows.cli_common.error_line` knows), the run logs the one line
`slam: error: <what> — <where> — <fix>` at ERROR and ends Failed with that line as the state's message. A
deployment run words the line for deployment parameters (`--param overrides='{"k": v}'` instead of
`--set k=v`), which is what `prefect deployment run --watch`, the UI and the worker log then show. A subflow
re-raises, so its parent (the root) reports once. A bug keeps its traceback.

After every root run, the catalog's last good copy is refreshed (`data_catalog.health`).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def _param(key: str, value: str) -> str:
    try:
        json.loads(value)
        shown = value
    except json.JSONDecodeError:
        shown = json.dumps(value)
    return f"--param 'overrides={{\"{key}\": {shown}}}'"


def _reword_flags(text: str) -> str:
    text = re.sub(r"--set ([\w.]+)=([^\s—;,)`]+)", lambda m: _param(m.group(1), m.group(2)), text)
    text = re.sub(r"--set ([\w.]+)(?=[\s`]|$)", lambda m: f"--param 'overrides={{\"{m.group(1)}\": …}}'", text)
    text = re.sub(r"--preset (\S+?)(?=[\s`]|$)", r"--param preset=\1", text)
    text = re.sub(r"--data-root(?: (/[^\s`]+))?", lambda m: f"--param data_root={m.group(1) or 'DIR'}", text)
    return text.replace("--set ", "--param overrides=").replace("slam run ", "a deployment run of ")


def for_deployment(line: str) -> str:
    """A CLI-worded error line reworded for `prefect deployment run` parameters. Another command it suggests in
    backticks (`slam synth spokenswag --preset smoke`, a step to run by hand first) keeps its CLI flags."""
    parts = re.split(r"(`[^`]*`)", line)
    return "".join(part if part.startswith("`slam ") and not part.startswith("`slam run ") else _reword_flags(part)
                   for part in parts)


def _run_context() -> tuple[bool, bool, bool]:
    """(whether a Prefect flow run is going on, whether it is the root run, whether it came from a deployment);
    all False without Prefect (flows/plain_runtime.py: errors propagate as plain exceptions)."""
    try:
        from prefect.context import FlowRunContext
    except ImportError:
        return False, False, False
    ctx = FlowRunContext.get()
    run = getattr(ctx, "flow_run", None) if ctx else None
    if run is None or not hasattr(run, "parent_task_run_id"):
        return False, False, False
    return True, run.parent_task_run_id is None, getattr(run, "deployment_id", None) is not None


def _refresh_good_copy(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refresh the catalog's last good copy of the run's data root (best effort: never fails the run)."""
    try:
        from data_catalog.health import save_good_copy
        from slam_core.config import RunConfig, SlamConfig
        from slam_core.paths import catalog_path

        bound = inspect.signature(fn).bind_partial(*args, **kwargs).arguments
        root = SlamConfig(run=RunConfig(data_root=bound.get("data_root"))).data_root
        save_good_copy(catalog_path(root), lock_wait_s=5.0)
    except Exception as err:  # a locked or missing catalog: the next run's check copies it
        log.debug("no good copy of the catalog: %s", err)


class _UserErrorsWithoutTraceback(logging.Filter):
    """Prefect's engine logs a failed task or flow with its traceback; for a user error the line is the story
    (`slam -v` keeps the traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not log.isEnabledFor(logging.DEBUG):
            from flows.cli_common import error_line

            if error_line(exc) is not None:
                record.exc_info, record.exc_text = None, None
        return True


_FILTER = _UserErrorsWithoutTraceback()


def hide_user_error_tracebacks() -> None:
    """Install the filter above on Prefect's run loggers (idempotent)."""
    for name in ("prefect.task_runs", "prefect.flow_runs", "prefect.task_engine", "prefect.flow_engine"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def user_facing(fn: Callable[..., Any]) -> Callable[..., Any]:
    """See the module docstring."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        hide_user_error_tracebacks()
        in_prefect, root, deployed = _run_context()
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            from flows.cli_common import error_line

            line = error_line(err)
            if line is None or not in_prefect:
                raise
            from prefect.logging import get_run_logger
            from prefect.states import Failed

            log.debug("the traceback of: %s", line, exc_info=True)
            if not root:  # the parent's call raises FailedRun with this line, and its root reports it
                return Failed(message=line)
            line = for_deployment(line) if deployed else line
            get_run_logger().error(line)
            return Failed(message=line)
        finally:
            if root or not in_prefect:  # plain runtime (flows/plain_runtime.py): every flow call
                _refresh_good_copy(fn, args, kwargs)

    return run
