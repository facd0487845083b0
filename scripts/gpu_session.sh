#!/usr/bin/env bash
# The whole GPU check in one command, for an offline GPU host that has torch + transformers (docs/performance.md):
# the GPU benches (bench/run_all.py --gpu, <= 6 minutes, results written after every variant), then the
# GPU-marked tests (packed kernels vs documents alone, compiled too), with the results copied to $OUT.
#
# Prepare where PyPI is reachable:  make wheels        (.wheels/bench, 5.4 MB)
# Run on the device tool:           command "bash scripts/gpu_session.sh", carry [".wheels"], timeout_s 600
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/slam-gpu-out}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/slam-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
# real speech for the units part's fp32 agreement, carried by `make wheels` (.wheels/real-speech)
[ -d .wheels/real-speech ] && export SLAM_REAL_SPEECH_DIR="$PWD/.wheels/real-speech"
{
  nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv || true
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  timeout 400 "$PY" -m bench.run_all --gpu
  echo "bench exit: $?"
  timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_lm_attention.py tests/test_train_speed.py \
    tests/test_units_invariant.py
  echo "gpu tests exit: $?"
} 2>&1 | tee "$OUT/gpu_session.log"
cp bench/results/*-gpu.json bench/results/gpu-parts.json "$OUT"/ 2>/dev/null || true
