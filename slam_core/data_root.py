"""The data root a run writes to, checked before any work (and, from `slam run`, before Prefect starts):

it can be created, a file can be written in it, and its catalog opens: not held by another process for long
(`data_catalog.health`), not unwritable, not corrupt (a corrupt catalog is moved aside and its last good copy
put back, with one warning line). Each refusal is one `InputError`: what, where, how to fix it.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import duckdb

from data_catalog.health import CatalogLockedError, CatalogUnwritableError, open_check, save_good_copy
from slam_core.errors import InputError
from slam_core.paths import catalog_path

log = logging.getLogger(__name__)

FIX = "pass --data-root a writable directory (or set SLAM_DATA_ROOT to one)"


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def check_writable(root: str | Path) -> Path:
    """Create the root if needed and write (then delete) a probe file in it; InputError when either fails."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError("the data root is a file, not a directory", root, FIX) from None
    except OSError as err:
        raise InputError(f"the data root cannot be created ({_reason(err)})", root, FIX) from None
    probe = root / f".slam-write-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"slam")
    except OSError as err:
        raise InputError(f"the data root is not writable ({_reason(err)})", root, FIX) from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return root


def lock_wait_s() -> float:
    """How long the check waits for another process's hold on the catalog (DuckDB admits one writing process;
    slam's writers hold it for milliseconds): $SLAM_CATALOG_LOCK_WAIT_S, else 30 s."""
    return float(os.environ.get("SLAM_CATALOG_LOCK_WAIT_S") or 30.0)


def check_data_root(root: str | Path, wait_s: float | None = None) -> str | None:
    """Refuse a data root the run cannot write (see the module docstring); returns the line said when a corrupt
    catalog was recovered, else None. Also refreshes the catalog's last good copy."""
    wait_s = lock_wait_s() if wait_s is None else wait_s
    root = check_writable(root)
    path = catalog_path(root)
    try:
        recovered = open_check(path, wait_s)
        save_good_copy(path, wait_s)
    except CatalogLockedError as err:
        raise InputError(f"the catalog is locked by another process, {err.holder}, for over {wait_s:.0f} s",
                         path, "let that process finish or close it (a DuckDB shell or notebook holding the file), "
                         "or use another --data-root") from None
    except CatalogUnwritableError as err:
        raise InputError(f"the catalog cannot be opened for writing ({err})", path,
                         "make it writable, or pass --data-root a writable directory") from None
    except OSError as err:
        raise InputError(f"the catalog cannot be written ({_reason(err)})", path, FIX) from None
    except duckdb.Error as err:
        raise InputError(f"the catalog cannot be opened ({' '.join(str(err).split())[:200]})", path,
                         "free disk space or fix the file system, or pass --data-root another directory") from None
    return recovered.line() if recovered else None
