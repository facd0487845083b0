"""Test-wide settings: offline hub, isolated Prefect state, no telemetry."""

from __future__ import annotations

import os
import tempfile

# Must be set before transformers / prefect are imported by any test module.
_PREFECT_TMP = tempfile.mkdtemp(prefix="slam-tests-prefect-")
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_HOME": _PREFECT_TMP,
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH": os.path.join(_PREFECT_TMP, "results"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
})
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """A throwaway Prefect API (fresh SQLite) for flow tests; result storage is isolated above."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and OpenMP spinning makes them 10x slower on a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
