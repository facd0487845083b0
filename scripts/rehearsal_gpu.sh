#!/usr/bin/env bash
# The GPU dress rehearsal alone on an offline host with torch + transformers (make rehearsal-gpu): install the
# carried wheels (make gpu-carry) into a private folder, then run scripts/rehearsal.py at real model shapes.
# Extra arguments go to scripts/rehearsal.py. The whole GPU check (benches, then this) is scripts/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=${SLAM_CARRY_SITE:-/tmp/slam-site}
PYTHON=${PYTHON:-python3}
if ls .gpu-carry/wheels/*.whl >/dev/null 2>&1; then
  t0=$(date +%s)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu-carry/wheels/*.whl
  echo "rehearsal: carried wheels installed in $(( $(date +%s) - t0 )) s"
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" scripts/gpu_probe.py
exec "$PYTHON" scripts/rehearsal.py --size real "$@"
