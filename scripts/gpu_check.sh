#!/usr/bin/env bash
# make gpu-check: the whole GPU check in one call on the offline GPU host, <= 9 minutes wall with the installs:
#   1. install the carry (.gpu-carry/wheels from `make gpu-carry`) into /tmp/slam-site (--no-index --no-deps);
#   2. scripts/gpu_probe.py: every import the check makes, each missing module named, before any GPU work;
#   3. the GPU bench parts, most important first, each with its budget (python -m bench.run_all --gpu, 240 s);
#   4. the dress rehearsal at the real model shapes (scripts/rehearsal.py --size real) with the time left;
#   5. the GPU-marked tests, when at least 90 s are left.
# Every result is written as it goes to bench/results/ and to $OUT: gpu-check.log, gpu-parts.json,
# train-gpu.json (train, train_dpo, train_kernels), units-, synth-, generate-, eval-gpu.json, rehearsal-gpu.json:
# 8 files, the most the device tool brings back.
#
# Device tool:  run(command="bash scripts/gpu_check.sh", carry=[".gpu-carry"], timeout_s=600)
# Dry run on CPU, in the twin (make gpu-twin / gpu-twin-fast): SLAM_GPU_CHECK_DRY=1 PYTHON=<twin python>: the parts'
# small forms (*-gpu-dryrun.json), the rehearsal at --size tiny, no install (the twin holds the carry).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${SLAM_GPU_CHECK_DRY:-0}
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/slam-gpu-check}
if [ "$DRY" = 1 ]; then
  TOTAL_S=${GPU_CHECK_TOTAL_S:-1500} BENCH_S=${GPU_CHECK_BENCH_S:-420} SIZE=tiny SUFFIX=gpu-dryrun
  REHEARSAL_SET=${GPU_CHECK_REHEARSAL_SET:-}
  export SLAM_BENCH_DRY_RUN=1
else
  TOTAL_S=${GPU_CHECK_TOTAL_S:-540} BENCH_S=${GPU_CHECK_BENCH_S:-240} SIZE=real SUFFIX=gpu
  # the rehearsal's 60 s + 30 s training budgets, halved: the 2026-12-04 run's evaluate needs the time
  REHEARSAL_SET=${GPU_CHECK_REHEARSAL_SET:-train.budget_s=30 dpo.budget_s=15}
fi
mkdir -p "$OUT" bench/results
start=$(date +%s)
left() { echo $(( TOTAL_S - ($(date +%s) - start) )); }
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export SLAM_RESULTS_MIRROR="$OUT"
echo "gpu-check: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), dry run: $DRY," \
  "total ${TOTAL_S} s, bench ${BENCH_S} s, out $OUT"
nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv,noheader 2>/dev/null || echo "gpu-check: no nvidia-smi"

# 1. the carry
if [ "$DRY" != 1 ]; then
  if ls .gpu-carry/wheels/*.whl >/dev/null 2>&1; then
    t0=$(date +%s)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/slam-site .gpu-carry/wheels/*.whl \
      || { echo "slam: error: the carried wheels did not install — .gpu-carry/wheels — remake them with make gpu-carry"; exit 2; }
    echo "gpu-check: $(ls .gpu-carry/wheels/*.whl | wc -l) carried wheels installed in $(( $(date +%s) - t0 )) s"
    export PYTHONPATH="/tmp/slam-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu-check: no .gpu-carry/wheels (make gpu-carry); using what is installed"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
else
  export PYTHONPATH="$PWD"
fi
SPEECH=()
if ls .gpu-carry/speech/*.flac >/dev/null 2>&1; then
  export SLAM_REAL_SPEECH_DIR="$PWD/.gpu-carry/speech"
  SPEECH=(--speech "$PWD/.gpu-carry/speech")
fi

# 2. every import, before any GPU work
"$PY" scripts/gpu_probe.py || exit 2
echo "gpu-check: probe done at $(( TOTAL_S - $(left) )) s"

# 3. the bench parts
bench_s=$(( BENCH_S < $(left) - 60 ? BENCH_S : $(left) - 60 ))
"$PY" -m bench.run_all --gpu --total-s "$bench_s"
bench_rc=$?
echo "gpu-check: bench exit $bench_rc at $(( TOTAL_S - $(left) )) s"

# 4. the dress rehearsal, with the time left (its results file is written after every stage)
rehearsal_rc=skipped
if [ "${GPU_CHECK_SKIP_REHEARSAL:-0}" != 1 ]; then
sets=()
for s in $REHEARSAL_SET; do sets+=(--set "$s"); done
rehearsal_s=$(( $(left) - 15 ))
if [ "$rehearsal_s" -lt 60 ]; then
  echo "gpu-check: rehearsal not started: ${rehearsal_s} s left"
  rehearsal_rc="not started"
else
  echo "gpu-check: rehearsal --size $SIZE with ${rehearsal_s} s"
  timeout --kill-after=10 "$rehearsal_s" "$PY" scripts/rehearsal.py --size "$SIZE" --runtime plain \
    --out "bench/results/rehearsal-$SUFFIX.json" "${SPEECH[@]}" "${sets[@]}"
  rehearsal_rc=$?
  [ "$rehearsal_rc" = 124 ] && echo "gpu-check: the rehearsal was stopped at its ${rehearsal_s} s (its JSON has what finished)"
fi
echo "gpu-check: rehearsal exit $rehearsal_rc at $(( TOTAL_S - $(left) )) s"
fi

# 5. the GPU-marked tests, when there is time (82 s on an H200, 2026-12-04)
if [ "$DRY" != 1 ] && [ "$(left)" -ge 90 ]; then
  timeout --kill-after=5 $(( $(left) - 5 )) "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_lm_attention.py \
    tests/test_train_speed.py tests/test_units_invariant.py
  echo "gpu-check: gpu tests exit $? at $(( TOTAL_S - $(left) )) s"
fi
echo "gpu-check: finished in $(( TOTAL_S - $(left) )) s (bench $bench_rc, rehearsal $rehearsal_rc); results in bench/results and $OUT"
[ "$bench_rc" = 0 ] && { [ "$rehearsal_rc" = 0 ] || [ "$rehearsal_rc" = skipped ]; }
