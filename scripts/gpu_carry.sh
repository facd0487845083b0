#!/usr/bin/env bash
# The one carry to the offline GPU host (make gpu-carry): the wheels of requirements/gpu-carry*.txt for CPython 3.12
# on x86-64 Linux (--no-deps, each dependency named there) and the real-speech recordings (the rehearsal's corpora
# are cut from them; the units bench part's fp32 agreement uses them with their reference units), in one folder.
# Everything carried (this folder + the repository) must stay under 64 MiB: checked here.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.gpu-carry}
PYTHON=${PYTHON:-python3}
SPEECH=${SPEECH:-}
LIMIT_MIB=${LIMIT_MIB:-64}
rm -rf "$OUT/wheels" "$OUT/speech"
mkdir -p "$OUT/wheels" "$OUT/speech"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$OUT/wheels" -r requirements/gpu-carry.txt
"$PYTHON" -m pip wheel -q --no-deps -w "$OUT/wheels" -r requirements/gpu-carry-sdists.txt
want=$(grep -cvE '^\s*(#|$)' requirements/gpu-carry.txt requirements/gpu-carry-sdists.txt | awk -F: '{s+=$2} END {print s}')
got=$(ls "$OUT"/wheels/*.whl | wc -l)
[ "$got" -eq "$want" ] || { echo "slam: error: $got wheels for $want pinned names — $OUT/wheels — a name resolved to none or two" >&2; exit 1; }
if [ -z "$SPEECH" ]; then
  for cand in ../shared/data/real-speech /work/shared/data/real-speech; do
    if ls "$cand"/*.flac >/dev/null 2>&1; then SPEECH=$cand; break; fi
  done
fi
[ -n "$SPEECH" ] || { echo "slam: error: no real-speech folder found — SPEECH — set SPEECH=DIR (16 kHz FLACs)" >&2; exit 2; }
cp "$SPEECH"/*.flac "$OUT/speech/"
cp "$SPEECH"/*.jsonl "$OUT/speech/" 2>/dev/null || true
carry_kib=$(du -sk "$OUT" | cut -f1)
# what the device tool sends besides the carry: tracked files and untracked ones git does not ignore
repo_kib=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -ck 2>/dev/null | awk '/\ttotal$/ {s+=$1} END {print s}')
total_mib=$(( (carry_kib + repo_kib + 1023) / 1024 ))
echo "gpu-carry: $OUT: $got wheels + $(ls "$OUT"/speech | wc -l) speech files, $(( carry_kib / 1024 )) MiB; with the" \
  "repository ($(( repo_kib / 1024 )) MiB) ${total_mib} MiB of the ${LIMIT_MIB} MiB the device tool carries"
if [ "$total_mib" -ge "$LIMIT_MIB" ]; then
  echo "slam: error: carried files are ${total_mib} MiB — $OUT — the device tool takes at most ${LIMIT_MIB} MiB" >&2
  exit 1
fi
