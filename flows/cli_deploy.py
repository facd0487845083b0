"""`slam deploy server` and `slam deploy check`.

`slam deploy server [--host H] [--port P]`: the Prefect server the deployments run on: Prefect's own
`prefect server start`, in the foreground, in this process, with its SQLite writers in line (one at a time; why:
flows/temporary_server.py). Without it, that server logs the same `database is locked` errors as the temporary
one.

`slam deploy check [--deployment FLOW/NAME]`: before (or while) a deployment run waits, say whether a worker
polls its work pool. A run of a deployment whose pool has no worker stays `Scheduled`, then `Late`, and Prefect
says nothing; this names the pool, the runs waiting in it, and the command that starts a worker.

Exit 0 when every pool a deployment uses has an online worker; else one `slam: error:` line per pool without
one and exit 2. Registered in flows/cli.py with `add_deploy_parser(sub)`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

from slam_core.errors import InputError

WORKER_COMMAND = "prefect worker start --pool {pool} --type process --limit 1 --install-policy never &"


@dataclass
class PoolStatus:
    name: str
    deployments: list[str] = field(default_factory=list)
    online: list[str] = field(default_factory=list)   # names of workers whose heartbeat is recent
    waiting: int = 0                                  # runs of its deployments Scheduled or Late
    late: int = 0
    missing: bool = False                             # the pool does not exist at all

    def line(self, api_url: str) -> str:
        runs = f"; {self.waiting} run(s) waiting, {self.late} of them Late" if self.waiting else ""
        start = WORKER_COMMAND.format(pool=self.name)
        if self.missing:
            return (f"slam: error: work pool '{self.name}' does not exist (deployments: {', '.join(self.deployments)}"
                    f"{runs}) — {api_url} — create it and start a worker: prefect work-pool create {self.name} "
                    f"--type process --overwrite && {start}")
        return (f"slam: error: no worker is polling work pool '{self.name}' (deployments: "
                f"{', '.join(self.deployments)}{runs}) — {api_url} — start one in a shell with the same "
                f"PREFECT_API_URL and SLAM_DATA_ROOT: {start}")


def pool_status(client: Any, deployment: str | None = None) -> list[PoolStatus]:
    """Per work pool used by the deployments (or the one named 'flow/name'): its online workers and waiting runs."""
    from prefect.client.schemas.filters import (
        FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterState, FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType, WorkerStatus
    from prefect.exceptions import ObjectNotFound

    flows = {f.id: f.name for f in client.read_flows()}
    deployments = [d for d in client.read_deployments() if d.work_pool_name]
    named = [(f"{flows.get(d.flow_id, '?')}/{d.name}", d) for d in deployments]
    if deployment:
        named = [(n, d) for n, d in named if n == deployment]
        if not named:
            raise InputError(f"no deployment named '{deployment}'", "--deployment",
                             "give FLOW/NAME as `prefect deployment ls` lists it (or run `prefect deploy --all`)")
    pools: dict[str, PoolStatus] = {}
    for name, dep in named:
        pools.setdefault(dep.work_pool_name, PoolStatus(dep.work_pool_name)).deployments.append(name)
    for pool in pools.values():
        try:
            workers = client.read_workers_for_work_pool(pool.name)
        except ObjectNotFound:
            pool.missing, workers = True, []
        pool.online = [w.name for w in workers if w.status == WorkerStatus.ONLINE]
        ids = [d.id for n, d in named if d.work_pool_name == pool.name]
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=ids),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
        pool.waiting = len(runs)
        pool.late = sum(1 for r in runs if r.state and r.state.name == "Late")
    return sorted(pools.values(), key=lambda p: p.name)


def cmd_deploy_check(args: argparse.Namespace) -> int:
    from flows.cli_common import quiet_offline_env

    quiet_offline_env(args.verbose)
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()  # the environment, else the active Prefect profile
    if not api_url:
        raise InputError("no Prefect server is configured", "PREFECT_API_URL",
                         "export PREFECT_API_URL=http://127.0.0.1:PORT/api of the server the deployments are on "
                         "(README, Deployments)")
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        if client.api_healthcheck() is not None:  # the exception met, e.g. connection refused
            raise InputError("the Prefect server does not answer", f"PREFECT_API_URL={api_url}",
                             "start it (slam deploy server --host 127.0.0.1 --port PORT &) or fix the URL")
        pools = pool_status(client, args.deployment)
    if not pools:
        raise InputError("no deployments on this server", f"PREFECT_API_URL={api_url}",
                         "run `prefect --no-prompt deploy --all` in the checkout (reads prefect.yaml)")
    bad = [p for p in pools if p.missing or not p.online]
    for pool in pools:
        if pool in bad:
            print(pool.line(api_url), file=sys.stderr)
        else:
            print(f"work pool '{pool.name}': {len(pool.online)} worker(s) online ({', '.join(pool.online)}); "
                  f"{pool.waiting} run(s) waiting; deployments: {', '.join(pool.deployments)}")
    return 2 if bad else 0


def cmd_deploy_server(args: argparse.Namespace) -> int:
    from flows.cli_common import quiet_offline_env

    quiet_offline_env(args.verbose)
    from flows.temporary_server import one_writer_sqlite

    one_writer_sqlite()  # the foreground server builds its app in this process, so the change applies to it
    print(f"slam deploy server: Prefect's server on http://{args.host}:{args.port}/api, SQLite transactions one "
          f"writer at a time; point workers and `prefect deployment run` at it with "
          f"export PREFECT_API_URL=http://{args.host}:{args.port}/api", flush=True)
    from prefect.cli import app

    sys.argv = ["prefect", "server", "start", "--host", args.host, "--port", str(args.port)]  # Prefect's CLI reads argv
    app()
    return 0


def add_deploy_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `slam deploy server` and `slam deploy check` on the top-level subparsers."""
    dep = subparsers.add_parser("deploy", help="the Prefect deployments (server, work pools, workers)")
    dep_sub = dep.add_subparsers(dest="deploy_command", required=True)
    server = dep_sub.add_parser("server", help="run the Prefect server for deployments in the foreground "
                                "(`prefect server start` with SQLite writers in line)")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                        "machine only)")
    server.add_argument("--port", type=int, default=4200, help="port to listen on (default 4200, Prefect's)")
    server.set_defaults(func=cmd_deploy_server)
    check = dep_sub.add_parser("check", help="say which work pool has no worker polling it, and how to start one")
    check.add_argument("--deployment", default=None, help="only this deployment, as FLOW/NAME "
                       "(e.g. reproduce/full-reproduction); default: every deployment on the server")
    check.set_defaults(func=cmd_deploy_check)
    return check
