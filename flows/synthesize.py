"""synthesize: sTinyStories or SpokenSwag speech, one cached task per shard (resumes at the last complete shard).

Run: `slam synth <kind> --input ... --prefect` or `prefect deployment run 'synthesize/synthesize'`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import load_config
from slam_core.paths import stage_dir
from slam_core.synth.jobs import plan_jobs
from tasks.common import catalog_at
from tasks.synth import synthesize_shard


@flow(name="synthesize", task_runner=ThreadPoolTaskRunner(max_workers=16), log_prints=True)
def synthesize(kind: str = "stinystories", input: str = "slam-data/raw/builtin/stories.parquet", out: str | None = None,
               backend: str | None = None, voices: list[str] | None = None, seed: int | None = None,
               workers: int | None = None, split: str = "train", limit: int | None = None, preset: str = "smoke",
               overrides: dict[str, Any] | None = None, data_root: str | None = None) -> dict[str, Any]:
    """Plan shards of `input`, speak each in `workers` processes, record each shard in the catalog."""
    cfg = load_config(preset, overrides, data_root)
    if backend:
        cfg.synth.backend = backend
        if not voices and kind == "stinystories":
            cfg.synth.voices = ["af_heart"] if backend == "kokoro" else ["en-us"]
    if workers:
        cfg.synth.workers = workers
    seed = cfg.run.seed if seed is None else seed
    out_dir = Path(out) if out else stage_dir(cfg.data_root, "synth", kind)
    jobs, bad, info = plan_jobs(kind, input, cfg.synth, seed, out_dir, split, voices=voices, limit=limit)
    root = str(cfg.data_root)
    for item, reason, detail in bad:  # stories with nothing speakable: counted before any shard runs
        catalog_at(root).record_quarantine("synth", kind, str(item), reason, detail, "plan")
    # Tasks beyond the worker count only wait for a process, so submit at most `workers` at a time.
    records: list[dict[str, Any]] = []
    window = max(1, cfg.synth.workers)
    for start in range(0, len(jobs), window):
        futures = [synthesize_shard.submit(j["kind"], j["args"], cfg.synth.workers, j["out_path"], j["dataset"],
                                           j["split"], j["fingerprint"], root) for j in jobs[start:start + window]]
        records += [f.result() for f in futures]
    quarantined = Counter(b[1] for b in bad) + Counter(b[1] for r in records for b in r["bad"])
    return {**info, "seed": seed, "shards": [r["path"] for r in records], "rows": sum(r["rows"] for r in records),
            "audio_hours": round(sum(r["audio_seconds"] for r in records) / 3600, 4),
            "reused_shards": sum(r["reused"] for r in records), "quarantined": dict(quarantined)}


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=("stinystories", "spokenswag"), help="which synthetic set")
    parser.add_argument("--input", required=True, help="text table, text source dir or published SpokenSwag dir")
    parser.add_argument("--out", default=None, help="output dir (default <data root>/synth/<kind>)")
    parser.add_argument("--preset", default="smoke", help="preset (smoke, slam, ...)")
    a = parser.parse_args()
    print(json.dumps(synthesize(kind=a.kind, input=a.input, out=a.out, preset=a.preset), indent=2, default=str))
