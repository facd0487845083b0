"""reproduce: the whole Slamming recipe, top to bottom.

    1. prepare-data   corpus -> synthetic speech -> VAD segments -> units (+ spoken pairs)
    2. train-lm       TWIST init -> budgeted pre-training -> DPO
    3. evaluate       pair metrics + continuations for both checkpoints -> HTML report
    4. the run's story on this flow run: metrics table, per-stage summary, link to the served report

Run: `slam run reproduce --preset smoke`, `python -m flows.reproduce --preset smoke`,
or `prefect deployment run 'reproduce/full-reproduction'`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import check_resources, load_config, save_resolved
from flows.entry import user_facing
from flows.evaluate import evaluate
from flows.interleaved import reproduce_interleaved
from flows.prepare_data import prepare_data
from flows.train_lm import train_lm
from slam_core.run_summary import checkpoint_label, stage_rows
from tasks.artifacts import publish_run_story
from tasks.common import catalog_at


@flow(name="reproduce", log_prints=True)
@user_facing
def reproduce(preset: str = "smoke", overrides: dict[str, Any] | None = None,
              data_root: str | None = None) -> dict[str, Any]:
    """Run every stage of the recipe; returns the report path and the evaluation results."""
    cfg = load_config(preset, overrides, data_root)
    if cfg.interleave.enabled:  # SlamKit's interleaved speech-text path has stages of its own
        return reproduce_interleaved(preset, overrides, data_root)
    check_resources(cfg)  # refuse before any work when disk, memory or GPU cannot hold the run
    root = str(cfg.data_root)
    catalog_at(root).record_run(cfg.run.name, cfg.resolve())
    save_resolved(cfg, "reproduce")

    prepared = prepare_data(preset, overrides, root)
    print(f"data: {prepared['tokens']:,} unit tokens from {prepared['audio_hours']:.2f} h of speech")

    trained = train_lm(preset, overrides, root, prepared=prepared)
    checkpoints = [trained["pretrain"]["checkpoint"]] + ([trained["dpo"]["checkpoint"]] if "dpo" in trained else [])

    evaluated = evaluate(preset, overrides, root, checkpoints=checkpoints, prepared=prepared,
                         metrics_csv=str(trained["pretrain"]["run_dir"]) + "/metrics.csv")
    for r in evaluated["results"]:
        print(f"{r['metric']:>10} {r['accuracy']:.3f} (95% CI {r['ci_low']:.3f}-{r['ci_high']:.3f}, n={r['n']}) "
              f"{checkpoint_label(r['checkpoint'])}")
    stages = stage_rows(prepared, trained, evaluated)
    for s in stages:
        print(f"stage {s['stage']}: " + ", ".join(f"{k} {v}" for k, v in s.items() if k != "stage" and v not in (None, "")))
    story = publish_run_story(cfg.run.name, root, evaluated["report"], stages)
    print(f"report: {evaluated['report']} (browse it at {story['report_url']} after `slam report serve --data-root {root}`)")
    return {"report": evaluated["report"], "report_url": story["report_url"], "results": evaluated["results"],
            "checkpoints": checkpoints, "stages": stages}


if __name__ == "__main__":
    from flows.common import run_from_command_line

    run_from_command_line(reproduce, __doc__)
