"""What every `slam` sub-command shares: the offline environment, `--set` parsing, and the one error path.

Every user error (a bad option, file, config value or model) ends in one line on stderr,
`slam: error: <what> — <file or field> — <how to fix>`, and exit status 2; `--debug` (or `-v`) shows the
traceback instead. Anything else is a bug in slam and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

DEBUG_FLAGS = ("-v", "--verbose", "--debug")
USER_ERROR_EXIT = 2


def quiet_offline_env(verbose: bool = False) -> None:
    """Telemetry off and a patient ephemeral server; must run before Prefect is imported (docs/offline-standins.md).
    Unless `verbose`, a quiet log (flows/quiet_log.py)."""
    from flows.quiet_log import quiet_logging

    quiet_logging(verbose)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "slam_core,data_catalog")


def parse_overrides(items: list[str]) -> dict[str, str] | None:
    """`--set key=value` strings as a dict (None when there are none); a malformed one raises ConfigError."""
    from slam_core.config import parse_override

    return dict(parse_override(o) for o in items) or None


def _int_at_least(minimum: int, doc: str):
    """An argparse type: a whole number >= `minimum`, else argparse's one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__doc__ = doc
    return parse


positive_int = _int_at_least(1, "argparse type of counts that must be at least 1 (batch sizes, workers, limits).")
non_negative_int = _int_at_least(0, "argparse type of seeds and indices.")


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Errors whose message already says what is wrong and what to do (imported late: slam_core pulls torch)."""
    from pydantic import ValidationError
    from safetensors import SafetensorError

    from slam_core.atomic import DiskFullError
    from slam_core.audio.io import BadAudioError
    from slam_core.config import ConfigError
    from slam_core.corpora.archive import ArchiveError
    from slam_core.corpora.download import ChecksumMismatchError, DownloadError
    from slam_core.corpora.hub import HubUnavailableError
    from slam_core.errors import InputError
    from slam_core.eval.pairs import CheckpointNotFoundError
    from slam_core.eval.vocoder import VocoderNotFoundError
    from slam_core.lm.model import BaseModelUnavailable
    from slam_core.preflight import PreflightError
    from slam_core.synth.base import TTSSetupError
    from slam_core.units.encoder import EncoderNotAvailableError
    from slam_core.units.quantizer import KmeansError

    return (InputError, ConfigError, ValidationError, SafetensorError, FileNotFoundError, FileExistsError,
            NotADirectoryError, IsADirectoryError, PermissionError, BadAudioError, ArchiveError,
            ChecksumMismatchError, DownloadError, HubUnavailableError, CheckpointNotFoundError, VocoderNotFoundError,
            BaseModelUnavailable, EncoderNotAvailableError, KmeansError, DiskFullError, PreflightError, TTSSetupError)


def error_line(err: BaseException) -> str | None:
    """The one-line message of a user error, or None when `err` is not one (a bug: keep the traceback). A flow
    run that ended on a user error (flows/entry.py) raises Prefect's FailedRun carrying its line."""
    if type(err).__name__ == "FailedRun" and str(err).startswith("slam: error: "):
        return " ".join(str(err).split())
    if not isinstance(err, _user_error_types()):
        return None
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or err.title
        return (f"slam: error: invalid value {first.get('input')!r} ({first['msg']}) — {err.title}.{field} — "
                f"pass a value that satisfies it (`slam <command> --help` lists the options)")
    text = " ".join(str(err).split()) or type(err).__name__
    return f"slam: error: {text}"


def split_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """(argv without -v/--verbose/--debug, whether one was given): accepted before or after the sub-command."""
    return [a for a in argv if a not in DEBUG_FLAGS], any(a in DEBUG_FLAGS for a in argv)


def run_reporting_errors(command: Callable[[argparse.Namespace], int], args: argparse.Namespace,
                         debug: bool) -> int:
    """Run a sub-command; a user error becomes one line on stderr and exit status 2 (its traceback with --debug)."""
    try:
        return command(args)
    except Exception as err:
        line = error_line(err)
        if line is None or debug:
            raise
        print(line, file=sys.stderr)
        return USER_ERROR_EXIT


TERMINATED_EXIT = 143  # 128 + SIGTERM, as a shell reports a process the signal ended
_terminated: list[bool] = []


def stop_on_sigterm(grace_s: float = 20.0) -> None:
    """SIGTERM (`kill`, systemd, a scheduler's time limit) stops `slam` the way Ctrl-C does instead of killing it
    mid-line: one line says what happened and what to do, the run unwinds (Prefect marks it Crashed, stops its
    temporary server, DuckDB rolls back an open transaction) and exits 143; whatever was committed stays and the
    next run resumes from it. If unwinding takes longer than `grace_s`, the process exits anyway (a second SIGTERM
    kills at once)."""
    import signal
    import threading

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _terminated.append(True)
        print("slam: stopped by SIGTERM — finished shards and checkpoints stay in the catalog — rerun the same "
              "command to resume from them", file=sys.stderr, flush=True)
        timer = threading.Timer(grace_s, exit_after_sigterm)
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _stop_temporary_servers() -> None:
    """Stop the temporary Prefect server(s) this process started (else they outlive it, holding its pipes)."""
    module = sys.modules.get("prefect.server.api.server")
    for server in list(getattr(getattr(module, "SubprocessASGIServer", None), "_instances", {}).values()):
        try:
            server.stop()
        except Exception:  # already gone
            pass


def exit_after_sigterm() -> None:
    """Leave at once after SIGTERM, once the main thread has unwound (or the grace time is up): shard tasks still
    running in worker threads are abandoned (their temporaries are removed by the next run), the temporary server
    is stopped, and the exit status is 143."""
    _stop_temporary_servers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(TERMINATED_EXIT)


def interrupted_exit() -> int:
    """Exit status after a KeyboardInterrupt: after SIGTERM, leaves at once with 143 (`exit_after_sigterm`: the
    interpreter would otherwise wait for the shard tasks still running in threads); 130 after Ctrl-C."""
    if _terminated:
        exit_after_sigterm()
    return 130


def report_rejected(items: list[tuple[Any, str]]) -> None:
    """One `slam: error:` line per input refused while the others went on (e.g. a bad checkpoint among good)."""
    for item, reason in items:
        print(f"slam: error: {reason}" if str(item) in reason else f"slam: error: {item}: {reason}", file=sys.stderr)
