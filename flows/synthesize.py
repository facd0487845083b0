"""synthesize: sTinyStories or SpokenSwag speech, one cached task per shard (resumes at the last complete shard).

Run: `slam synth <kind> --input ... --prefect` or `prefect deployment run 'synthesize/synthesize'`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import load_config
from flows.entry import user_facing
from slam_core.inputs import check_synth_input
from slam_core.synth.jobs import default_voices, run_synthesis
from tasks.synth import synthesize_shard


@flow(name="synthesize", task_runner=ThreadPoolTaskRunner(max_workers=16), log_prints=True)
@user_facing
def synthesize(kind: str = "stinystories", input: str = "slam-data/raw/builtin/stories.parquet", out: str | None = None,
               backend: str | None = None, voices: list[str] | None = None, seed: int | None = None,
               workers: int | None = None, split: str = "train", limit: int | None = None, preset: str = "smoke",
               overrides: dict[str, Any] | None = None, data_root: str | None = None) -> dict[str, Any]:
    """Plan shards of `input`, speak each in `workers` processes, record each shard in the catalog."""
    cfg = load_config(preset, overrides, data_root)
    check_synth_input(kind, input, "input")
    if backend:
        cfg.synth.backend = backend
        if not voices and kind == "stinystories":
            cfg.synth.voices = default_voices(backend)
    if workers:
        cfg.synth.workers = workers
    root = str(cfg.data_root)

    def run_jobs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Tasks beyond the worker count only wait for a process, so submit at most `workers` at a time.
        records: list[dict[str, Any]] = []
        window = max(1, cfg.synth.workers)
        for start in range(0, len(jobs), window):
            futures = [synthesize_shard.submit(j["kind"], j["args"], cfg.synth.workers, j["out_path"], j["dataset"],
                                               j["split"], j["fingerprint"], root) for j in jobs[start:start + window]]
            records += [f.result() for f in futures]
        return records

    return run_synthesis(kind, input, cfg.synth, cfg.run.seed if seed is None else seed, root, run_jobs, out,
                         split, voices=voices, limit=limit, max_auto_bleu=cfg.corpus.swag_max_auto_bleu)
