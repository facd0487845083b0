#!/usr/bin/env bash
# Prove the deployment loop on 127.0.0.1: server -> work pool -> deploy -> worker -> deployment runs -> teardown.
# Usage: bash scripts/deploy_loop.sh   (uses .venv; leaves nothing running; exit 0 only if every run completed)
set -euo pipefail
set -m  # background jobs get default signal handling, so the worker stops on one SIGTERM (docs/offline-standins.md)
cd "$(dirname "$0")/.."
VENV_BIN=${VENV_BIN:-$PWD/.venv/bin}
export PATH="$VENV_BIN:$PATH"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=${PORT:-$(free_port)}
REPORT_PORT=$(free_port)
WORK=$(mktemp -d)
export PREFECT_HOME=$WORK/prefect PREFECT_API_URL=http://127.0.0.1:$PORT/api PREFECT_SERVER_API_HOST=127.0.0.1 \
  PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 PREFECT_SERVER_UI_ENABLED=false PREFECT_CLI_PROMPT=false \
  PREFECT_WORKER_QUERY_SECONDS=1 SLAM_ROOT=$PWD SLAM_DATA_ROOT=$WORK/data SLAM_REPORT_PORT=$REPORT_PORT \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
SERVER_PID= WORKER_PID= REPORT_PID=
cleanup() {
  local rc=$?
  for pid in $REPORT_PID $WORKER_PID $SERVER_PID; do
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
  echo "deploy loop: $([ $rc -eq 0 ] && echo PASSED || echo FAILED) (rc=$rc)"
  exit $rc
}
trap cleanup EXIT
t0=$(date +%s); step() { echo "[deploy-loop +$(( $(date +%s) - t0 ))s] $*"; }

step "server on 127.0.0.1:$PORT"
slam deploy server --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 & SERVER_PID=$!
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/api/health" >/dev/null && break; sleep 1; done
curl -sf "http://127.0.0.1:$PORT/api/health" >/dev/null || { tail -50 "$WORK/server.log"; exit 1; }

step "work pool + deploy --all"
prefect work-pool create local-pool --type process --overwrite >/dev/null
prefect --no-prompt deploy --all >"$WORK/deploy.log" 2>&1 || { cat "$WORK/deploy.log"; exit 1; }

step "tag concurrency limit: at most one 'gpu' task at a time (units, k-means, training, evaluation)"
prefect concurrency-limit create gpu 1 >/dev/null
prefect concurrency-limit inspect gpu | grep -Eq "gpu\W+1\W" || { prefect concurrency-limit inspect gpu; exit 1; }

step "worker"
prefect worker start --pool local-pool --type process --limit 1 --install-policy never >"$WORK/worker.log" 2>&1 &
WORKER_PID=$!

step "deployment runs with user mistakes end Failed with one line worded for deployment parameters"
if prefect deployment run 'reproduce/full-reproduction' --param preset=smok \
    --watch --watch-interval 2 --watch-timeout 300 >"$WORK/bad-preset.log" 2>&1; then
  echo "a deployment run with preset=smok completed"; exit 1
fi
if prefect deployment run 'reproduce/full-reproduction' --param preset=smoke \
    --param 'overrides={"corpus.spokenswag_dir": "/nonexistent/spokenswag"}' \
    --watch --watch-interval 2 --watch-timeout 300 >"$WORK/bad-input.log" 2>&1; then
  echo "a deployment run with a missing spokenswag_dir completed"; exit 1
fi
python - <<'PY'
import asyncio

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType


async def main() -> None:
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.FAILED]))))
    messages = sorted(r.state.message or "" for r in runs)
    assert len(messages) == 2, messages
    preset, missing = (next(m for m in messages if key in m) for key in ("'smok'", "spokenswag"))
    for line in (preset, missing):  # one line, the CLI's shape, no traceback, no CLI flag of the run itself
        assert line.startswith("slam: error: ") and "\n" not in line and "Traceback" not in line, line
        assert "--set " not in line and "--preset " not in line.split("`slam synth")[0], line
    assert "`slam synth" not in missing or "--preset smoke`" in missing, missing  # a CLI step keeps its flags
    assert "--param preset=" in preset, preset
    assert "--param 'overrides=" in missing and "/nonexistent/spokenswag" in missing, missing
    print("failed runs say:", *messages, sep="\n  ")


asyncio.run(main())
PY

SMOKE_SET='{"train.budget_s": 20, "dpo.budget_s": 8, "corpus.n_train_stories": 96, "corpus.n_heldout_stories": 32}'
step "deployment run reproduce/full-reproduction (smoke, short budget)"
prefect deployment run 'reproduce/full-reproduction' --param preset=smoke --param "overrides=$SMOKE_SET" \
  --watch --watch-interval 2 --watch-timeout 1500 || { tail -80 "$WORK/worker.log"; exit 1; }

step "the reproduction's own flow run carries the metrics, the stage summary and a report link that opens"
python -m flows.cli report serve --port "$REPORT_PORT" >"$WORK/report.log" 2>&1 & REPORT_PID=$!
python - <<'PY'
import asyncio
import os
import time
import urllib.request

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowFilter, FlowFilterName


async def main() -> None:
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["reproduce"])))
        arts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in runs])))
        progress = [a for a in await client.read_artifacts() if a.type == "progress"]
    keys = {a.key for a in arts}
    assert {"smoke-metrics", "smoke-stages", "smoke-report"} <= keys, keys
    assert progress and all(float(a.data) == 100.0 for a in progress), [(a.description, a.data) for a in progress]
    from slam_core.run_summary import report_url

    url = report_url("smoke", os.environ["SLAM_DATA_ROOT"])  # this data root's own URL
    assert any(url in str(a.data) for a in arts if a.key == "smoke-report"), url
    for _ in range(30):
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert resp.status == 200 and b"slam run: smoke" in resp.read()
                break
        except OSError:
            time.sleep(1)
    else:
        raise SystemExit(f"{url} did not answer")
    print(f"artifacts {sorted(keys)}, {len(progress)} progress artifacts at 100 %, {url} served")


asyncio.run(main())
PY

step "deployment run evaluate/nightly-eval (nothing new: must do no work)"
prefect deployment run 'evaluate/nightly-eval' --param preset=smoke --param "overrides=$SMOKE_SET" \
  --watch --watch-interval 2 --watch-timeout 600 || { tail -80 "$WORK/worker.log"; exit 1; }
grep -q "nothing new to evaluate" "$WORK/worker.log" || { echo "nightly-eval found work after the reproduction"; tail -40 "$WORK/worker.log"; exit 1; }
grep -Eq "0 (built-in )?pair metric\(s\) to compute" "$WORK/worker.log" || { echo "nightly-eval recomputed results"; tail -40 "$WORK/worker.log"; exit 1; }

step "gpu-tagged task runs never overlapped"
python - <<'PY'
import asyncio

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags


async def main() -> None:
    async with get_client() as client:
        runs = await client.read_task_runs(task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=["gpu"])),
                                           limit=200)
    spans = sorted((r.start_time, r.end_time, r.name) for r in runs if r.start_time and r.end_time)
    overlaps = [(a[2], b[2]) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]
    print(f"{len(spans)} gpu-tagged task runs, {len(overlaps)} overlapping")
    assert spans and not overlaps, overlaps


asyncio.run(main())
PY

step "schedules registered"
prefect deployment inspect 'evaluate/nightly-eval' | grep -q "0 3 \* \* \*"
step "done"
