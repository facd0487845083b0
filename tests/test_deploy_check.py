"""`slam deploy check`: a deployment whose work pool has no worker is named, with its waiting runs and the
command that starts a worker (a run there would sit Late and Prefect says nothing); with a worker, exit 0."""

from __future__ import annotations

import pytest

from flows.cli import main


def test_deploy_check_names_the_pool_without_a_worker(prefect_harness, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="check-pool", type="process"), overwrite=True)
        flow_id = client.create_flow_from_name("reproduce")
        dep_id = client.create_deployment(flow_id, "full-reproduction", work_pool_name="check-pool",
                                          parameters={"preset": "smoke"}, entrypoint="flows/reproduce.py:reproduce")
        client.create_flow_run_from_deployment(dep_id)
    assert main(["deploy", "check", "--deployment", "reproduce/full-reproduction"]) == 2
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("slam: error:")]
    assert ("no worker is polling work pool 'check-pool' (deployments: reproduce/full-reproduction; 1 run(s) "
            "waiting") in line
    assert "prefect worker start --pool check-pool --type process" in line and "Traceback" not in err

    with get_client(sync_client=True) as client:
        client.send_worker_heartbeat("check-pool", "worker-1", heartbeat_interval_seconds=30)
    assert main(["deploy", "check", "--deployment", "reproduce/full-reproduction"]) == 0
    assert "work pool 'check-pool': 1 worker(s) online (worker-1)" in capsys.readouterr().out


def test_deploy_check_without_a_server_says_how_to_point_at_one(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert main(["deploy", "check"]) == 2
    assert capsys.readouterr().err.startswith("slam: error: no Prefect server is configured — PREFECT_API_URL — ")
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens on port 9
        assert main(["deploy", "check"]) == 2
    assert "the Prefect server does not answer — PREFECT_API_URL=http://127.0.0.1:9/api — start it" in \
        capsys.readouterr().err


def test_unknown_deployment_is_one_line(prefect_harness, capsys):
    assert main(["deploy", "check", "--deployment", "reproduce/nope"]) == 2
    assert "no deployment named 'reproduce/nope' — --deployment —" in capsys.readouterr().err


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
