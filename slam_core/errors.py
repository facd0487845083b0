"""The shape of every user-facing error: what is wrong, where (a file or a config field), how to fix it.

`slam` prints such an error as one line, `slam: error: <what> — <where> — <how to fix>`, exit status 2, and
no traceback (`slam --debug …` shows it). Stages raise `InputError` (or a subclass) for input they refuse, so
the message is the same whichever entry point (CLI, flow, deployment) met the input first.
"""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad input: a file, a row, a config value or a model the user provided."""

    def __init__(self, what: str, where: str | os.PathLike, fix: str) -> None:
        self.what, self.where, self.fix = what, str(where), fix
        super().__init__(f"{what} — {where} — {fix}")


class CheckpointNotFoundError(FileNotFoundError):
    """A model directory or hub id that cannot be loaded here; the message says how to provide it."""
