"""Bad-input suite: every kind of bad input the pipeline meets, next to good input, through the real code paths.

    python scripts/bad_input_suite.py [--workdir DIR] [--long-hours 3] [--keep] [--json FILE]

Audio (one local-corpus shard, `tasks.corpora.segment_shard`: the task body the `prepare-source local` flow
runs): two good speech files beside a truncated FLAC, a zero-length file, all-NaN samples, 8 kHz stereo, a
long file (3 h of silence and tone by default, written in blocks so it is never held in memory) and random
bytes named `.flac`. Downloads and archives (the `prepare-source` HTTP path: `download_file` from a server on
127.0.0.1, `extract_archive`, failures recorded by `flows.data_sources.quarantine_part_failure`): a wrong
checksum, a corrupt tar and a tar with a `../` member, beside a good archive.

Hostile-user cases (scripts/bad_input_cases.py): huge float samples, same-stem files, out-of-vocabulary unit
shards, malformed `--set`, centroids, weights and checkpoints, a bad SWAG validation file, two configs sharing
an output path, files in the way of outputs, the judge key over plain http and a lost DPO reference.

Checks: each bad input is handled with its expected named reason in the catalog's quarantine table (or, for
the valid but unusual 8 kHz stereo and long files, segmented), the good files' segments are the same as in a
shard of good files alone, the good archive is extracted, nothing escaped the target directory. Prints a
table of figures (reason, seconds, peak memory growth) and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # corpus_fixtures: the 127.0.0.1 file server and archive builders

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from bad_input_cases import check_distinct_ids, more_audio_cases, run_all  # noqa: E402
from bad_input_orchestration import run_orchestration  # noqa: E402

SR = 16_000
STORY = ["One morning, Nemo the fish swam to the coral reef with a shiny shell.",
         "Nemo polished the shell until it gleamed in the warm water.",
         "In the end, Nemo kept the shell safe at the coral reef."]


def good_speech(out_dir: Path, n: int = 2) -> list[Path]:
    """Spoken stories (espeak-ng, offline) as 16 kHz FLAC: input that must come through untouched."""
    import pyarrow.parquet as pq

    from slam_core.config import SynthConfig
    from slam_core.synth.dataset import synthesize_recording_shard

    plans = [{"recording_id": f"good-{i}", "split": "train", "voice": "en-us", "story_ids": [f"s{i}"],
              "stories": [STORY]} for i in range(n)]
    shard = synthesize_recording_shard(plans, SynthConfig(voices=["en-us"]), out_dir / "synth", shard_index=0)
    files = []
    for row in pq.read_table(shard["path"]).to_pylist():
        dest = out_dir / "corpus" / "spk" / f"{row['recording_id']}.flac"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(row["path"], dest)
        files.append(dest)
    return files


def write_long_file(path: Path, hours: float, block_s: float = 60.0) -> float:
    """Silence with a 1 s tone every minute, written block by block (a 3 h file never sits in memory)."""
    t = np.arange(int(SR * 1.0)) / SR
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    block = np.zeros(int(SR * block_s), dtype=np.float32)
    block[: tone.size] = tone
    n_blocks = max(1, int(round(hours * 3600 / block_s)))
    with sf.SoundFile(str(path), "w", SR, 1, subtype="PCM_16", format="FLAC") as fh:
        for _ in range(n_blocks):
            fh.write(block)
    return n_blocks * block_s


def build_audio_inputs(corpus: Path, good: list[Path], long_hours: float) -> dict[str, dict[str, Any]]:
    """name -> {path, expect}: expect is a quarantine reason, or 'segmented' for valid but unusual input."""
    spk = corpus / "spk"
    wave, rate = sf.read(str(good[0]), dtype="float32")
    cases: dict[str, dict[str, Any]] = {}

    def add(name: str, path: Path, expect: set[str]) -> None:
        cases[name] = {"path": path, "expect": expect}

    truncated = spk / "truncated.flac"
    truncated.write_bytes(good[0].read_bytes()[: good[0].stat().st_size // 3])
    add("truncated FLAC", truncated, {"truncated_or_corrupt", "unreadable"})
    empty = spk / "empty.flac"
    empty.write_bytes(b"")
    add("zero-length file", empty, {"empty"})
    nan = spk / "all-nan.wav"  # FLAC is integer PCM and cannot hold NaN: a float WAV can
    sf.write(str(nan), np.full(SR * 2, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    add("all-NaN samples", nan, {"non_finite"})
    stereo = spk / "stereo-8k.wav"
    import soxr

    low = soxr.resample(wave, rate, 8000).astype(np.float32)
    sf.write(str(stereo), np.stack([low, 0.5 * low], axis=1), 8000, subtype="PCM_16")
    add("8 kHz stereo", stereo, {"segmented"})
    junk = spk / "random-bytes.flac"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    add("random bytes named .flac", junk, {"unreadable"})
    cases.update(more_audio_cases(spk, good))
    if long_hours > 0:
        long_file = spk / "long.flac"
        t0 = time.monotonic()
        seconds = write_long_file(long_file, long_hours)
        cases_long = {"path": long_file, "expect": {"segmented", "no_speech"},
                      "note": f"{seconds / 3600:.2f} h written in {time.monotonic() - t0:.1f} s, "
                              f"{long_file.stat().st_size / 1e6:.1f} MB"}
        cases[f"{long_hours:g}-hour file"] = cases_long
    return cases


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_audio(work: Path, long_hours: float) -> tuple[list[dict[str, Any]], list[str]]:
    from data_catalog import Catalog
    from tasks import corpora

    import pyarrow.parquet as pq

    root = work / "root"
    good = good_speech(work)
    # the good files alone: what their segments must be in the mixed shard too
    alone = corpora.segment_shard.fn("local", [str(p) for p in good], str(work / "alone.parquet"), "train", {},
                                     "fp-alone", str(work / "root-alone"))
    cases = build_audio_inputs(work / "corpus", good, long_hours)
    files = sorted([str(p) for p in good] + [str(c["path"]) for c in cases.values()])
    rss0, t0 = peak_rss_mb(), time.monotonic()
    out = corpora.segment_shard.fn("local", files, str(work / "mixed.parquet"), "train", {}, "fp-mixed", str(root))
    seconds, rss_growth = time.monotonic() - t0, peak_rss_mb() - rss0
    segments = pq.read_table(out["path"]).to_pylist()
    quarantine = {q["path"]: q for q in Catalog(root / "catalog.duckdb").quarantined()}
    rows, failures = [], []
    for name, case in cases.items():
        path = str(case["path"])
        n_seg = sum(1 for s in segments if s["source_path"] == path)
        got = quarantine[path]["reason"] if path in quarantine else ("segmented" if n_seg else "missing")
        ok = got in case["expect"] and (got != "segmented" or n_seg > 0)
        rows.append({"input": name, "handled_as": got, "segments": n_seg, "ok": ok,
                     "detail": (quarantine.get(path) or {}).get("detail") or case.get("note", "")})
        if not ok:
            failures.append(f"{name}: handled as {got!r}, expected one of {sorted(case['expect'])}")
    failures += check_distinct_ids(segments)
    strip = [{k: v for k, v in s.items() if k not in ("segment_id",)} for s in pq.read_table(alone["path"]).to_pylist()]
    mixed_good = [{k: v for k, v in s.items() if k not in ("segment_id",)} for s in segments
                  if s["source_path"] in {str(p) for p in good}]
    good_ok = bool(strip) and mixed_good == strip
    rows.append({"input": f"{len(good)} good speech files", "handled_as": "segmented", "segments": len(mixed_good),
                 "ok": good_ok, "detail": "same segments as a shard of good files alone" if good_ok else "DIFFER"})
    if not good_ok:
        failures.append("good files: segments differ from a shard of good files alone")
    recorded = Catalog(root / "catalog.duckdb").find_artifact(out["path"], "fp-mixed")
    if recorded is None:
        failures.append("the mixed shard was not recorded in the catalog")
    rows.append({"input": "(shard)", "handled_as": f"{seconds:.1f} s", "segments": len(segments), "ok": True,
                 "detail": f"peak RSS growth {rss_growth:.0f} MB"})
    return rows, failures


def run_archives(work: Path) -> tuple[list[dict[str, Any]], list[str]]:
    from corpus_fixtures import FileServer, flac_bytes, tar_gz, tone

    from data_catalog import Catalog
    from flows.data_sources import quarantine_part_failure
    from slam_core.corpora.archive import extract_archive
    from slam_core.corpora.download import download_file

    good = tar_gz({"LibriSpeech/dev-clean/19/198/19-198-0000.flac": flac_bytes(tone(0.5))})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in (("fine.txt", b"ok"), ("../escaped.txt", b"gotcha")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    traversal = raw.getvalue()
    corrupt = good[: len(good) // 2] + b"\x00" * 64
    served = {"good.tar.gz": good, "checksum.tar.gz": good, "corrupt.tar.gz": corrupt, "traversal.tar": traversal}
    published = {name: hashlib.sha256(data).hexdigest() for name, data in served.items()}
    published["checksum.tar.gz"] = hashlib.sha256(b"the bytes the publisher hashed").hexdigest()
    expect = {"good.tar.gz": "extracted", "checksum.tar.gz": "checksum_mismatch", "corrupt.tar.gz": "corrupt_archive",
              "traversal.tar": "unsafe_archive_member"}
    root = work / "root-archives"
    raw_dir = root / "raw" / "suite"
    rows, failures = [], []
    with FileServer(served) as server:
        for name in served:
            t0 = time.monotonic()
            try:
                archive = download_file(f"{server.base}/files/{name}", raw_dir / "archives" / name,
                                        sha256=published[name], retries=1, backoff_s=0.01)
                extract_archive(archive, raw_dir / name.split(".")[0])
                got, detail = "extracted", ""
            except Exception as err:  # what the flow does with a failed part
                got = quarantine_part_failure(str(root), "suite", name, f"{server.base}/files/{name}", err,
                                              f"fp-{name}")
                if got is None:
                    raise
                detail = str(err).splitlines()[0][:120]
            rows.append({"input": name, "handled_as": got, "segments": "", "ok": got == expect[name],
                         "detail": f"{time.monotonic() - t0:.2f} s; {detail}"})
    quarantine = {q["path"]: q["reason"] for q in Catalog(root / "catalog.duckdb").quarantined()}
    for row in rows:
        if row["handled_as"] != "extracted" and quarantine.get(row["input"]) != row["handled_as"]:
            row["ok"] = False
            failures.append(f"{row['input']}: no quarantine row with reason {row['handled_as']}")
        elif not row["ok"]:
            failures.append(f"{row['input']}: handled as {row['handled_as']}, expected {expect[row['input']]}")
    if (raw_dir / "escaped.txt").exists() or (root / "raw" / "escaped.txt").exists():
        failures.append("a ../ member escaped the extraction directory")
    if not (raw_dir / "good" / "LibriSpeech" / "dev-clean").is_dir():
        failures.append("the good archive was not extracted")
    return rows, failures


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'input':<40} {'handled as':<32} {'segments':>8}  ok   detail")
    for r in rows:
        print(f"{r['input']:<40} {str(r['handled_as']):<32} {str(r['segments']):>8}  "
              f"{'yes' if r['ok'] else 'NO ':<4} {str(r['detail'])[:90]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="where inputs and data roots go (default: a temp dir)")
    parser.add_argument("--long-hours", type=float, default=3.0, help="length of the long file (0: leave it out)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", default=None, help="also write the rows and failures to this JSON file")
    parser.add_argument("--no-orchestration", action="store_true",
                        help="leave out the orchestration cases (concurrent runs, corrupt catalog and shard, full disk, "
                             "SIGTERM: several minutes of flow runs)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="slam-bad-input-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    audio_rows, audio_fail = run_audio(work, args.long_hours)
    archive_rows, archive_fail = run_archives(work)
    case_rows, case_fail = run_all(work / "cases")
    orch_rows, orch_fail = ([], []) if args.no_orchestration else run_orchestration(work / "orchestration")
    rows = audio_rows + archive_rows + case_rows + orch_rows
    failures = audio_fail + archive_fail + case_fail + orch_fail
    print_table(rows)
    bad = [r for r in rows if r["handled_as"] not in ("segmented", "extracted", "allowed", "checked")
           and not r["input"].startswith(("(", "user files", "data root")) and "good speech" not in r["input"]]
    handled = sum(r["ok"] for r in bad)
    print(f"\n{handled} of {len(bad)} bad inputs handled (quarantined with a named reason, refused with one line, "
          f"isolated or redone), {sum(r['ok'] for r in rows)} of {len(rows)} checks passed, "
          f"{time.monotonic() - t0:.0f} s")
    for f in failures:
        print(f"  FAIL {f}")
    print("BAD-INPUT SUITE: " + ("PASSED" if not failures else "FAILED"))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "failures": failures, "bad_inputs": len(bad), "handled": handled},
                                                  indent=2, default=str))
    if args.keep or failures:
        print(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
