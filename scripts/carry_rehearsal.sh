#!/usr/bin/env bash
# What the GPU rehearsal carries to an offline GPU host (README, "Dress rehearsal"): the wheels of
# requirements/gpu-host-rehearsal*.txt for CPython 3.12 on x86-64 Linux, and the real-speech recordings the
# corpora are cut from. Everything carried (this folder + the repository) must stay under 64 MiB.
set -euo pipefail
OUT=${1:-.rehearsal-carry}
PYTHON=${PYTHON:-python3}
SPEECH=${SPEECH:-}
LIMIT_MIB=${LIMIT_MIB:-64}
mkdir -p "$OUT/wheels" "$OUT/speech"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$OUT/wheels" -r requirements/gpu-host-rehearsal.txt
"$PYTHON" -m pip wheel -q --no-deps -w "$OUT/wheels" -r requirements/gpu-host-rehearsal-sdists.txt
if [ -z "$SPEECH" ]; then
  for cand in ../shared/data/real-speech /work/shared/data/real-speech; do
    if ls "$cand"/*.flac >/dev/null 2>&1; then SPEECH=$cand; break; fi
  done
fi
[ -n "$SPEECH" ] || { echo "slam: error: no real-speech folder found — SPEECH — set SPEECH=DIR (16 kHz FLACs)" >&2; exit 2; }
cp "$SPEECH"/*.flac "$OUT/speech/"
carry_kib=$(du -sk "$OUT" | cut -f1)
repo_kib=$(git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
total_mib=$(( (carry_kib + repo_kib) / 1024 ))
echo "carry: $OUT $(( carry_kib / 1024 )) MiB + repository $(( repo_kib / 1024 )) MiB = ${total_mib} MiB (limit ${LIMIT_MIB} MiB)"
if [ "$total_mib" -ge "$LIMIT_MIB" ]; then
  echo "slam: error: carried files are ${total_mib} MiB — $OUT — the device tool takes at most ${LIMIT_MIB} MiB" >&2
  exit 1
fi
