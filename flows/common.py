"""Config loading shared by every flow: preset + overrides + data root -> validated SlamConfig."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from slam_core.atomic import write_text_atomic
from slam_core.config import ParallelConfig, SlamConfig, apply_overrides
from slam_core.device import pick_device
from slam_core.fingerprint import code_version, fingerprint
from slam_core.input_checks import check_config_inputs
from slam_core.presets import get_preset

log = logging.getLogger(__name__)


def load_config(preset: str, overrides: dict[str, Any] | None = None, data_root: str | None = None) -> SlamConfig:
    """Build the preset, apply dotted overrides and the data root, validate, and check derived values."""
    cfg = apply_overrides(get_preset(preset), overrides or {})
    if data_root:
        cfg.run.data_root = str(Path(data_root).expanduser().resolve())
    cfg.run.data_root = str(cfg.data_root)  # freeze: tasks must never depend on the worker's cwd or env
    cfg.resolve()
    check_config_inputs(cfg)  # files the config names: refused now, not minutes into a flow
    return cfg


def save_resolved(cfg: SlamConfig, name: str) -> Path:
    """Write the resolved config beside the run's outputs (the receipt of what ran)."""
    from slam_core.plan import recorded_config

    out = cfg.data_root / "runs" / cfg.run.name / f"{name}.config.json"
    resolved = recorded_config(cfg)
    write_text_atomic(out, json.dumps(resolved, indent=2, sort_keys=True))
    return out


def check_resources(cfg: SlamConfig, inputs: tuple[str, ...] = ("corpus", "units", "eval")) -> None:
    """Preflight: refuse early when the data root cannot be written (or its catalog is locked), inputs of the
    `inputs` stages are missing (speech and text named by path, the quantiser; evaluation inputs unless
    eval.allow_skip), or disk, memory or GPUs cannot hold the run (PreflightError naming the resource, need,
    availability and override); print what was estimated."""
    from slam_core.data_root import check_data_root
    from slam_core.inputs import check_inputs
    from slam_core.preflight import preflight

    if (recovered := check_data_root(cfg.data_root)) is not None:
        print(f"warning: {recovered}")

    for missing in check_inputs(cfg, inputs):
        print(f"will skip: {missing.line()}")

    for need in preflight(cfg):
        unit = 1 if need.resource == "gpu" else 1024 ** 3
        have = "unknown" if need.available is None else f"{need.available / unit:.1f}"
        print(f"preflight {need.resource}: need {need.needed / unit:.2f}, available {have}"
              f"{'' if need.resource == 'gpu' else ' GB'}")


def task_runner_for(parallel: ParallelConfig) -> Any:
    """The Prefect task runner of the shard-parallel stages: a thread pool, or Dask (prefect-dask) on the
    scheduler at `parallel.dask_address` or on a local cluster whose dashboard and workers stay on 127.0.0.1."""
    if parallel.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise RuntimeError("parallel.task_runner=dask needs prefect-dask: pip install -e '.[dask]'") from None
        if parallel.dask_address:
            _warn_if_open_scheduler(parallel.dask_address)
            return DaskTaskRunner(address=parallel.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": parallel.max_workers, "threads_per_worker": 1,
                                              "processes": True, "host": "127.0.0.1",
                                              "dashboard_address": "127.0.0.1:0"})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=parallel.max_workers)


def _warn_if_open_scheduler(address: str) -> None:
    """An unencrypted scheduler on another host runs any pickled code sent to it: say so (README, Operations)."""
    from slam_core.eval.judge import is_loopback_url

    if address.startswith("tcp://") and not is_loopback_url(address):
        log.warning("parallel.dask_address=%s is plain tcp to another host: whoever reaches that scheduler can run "
                    "code on its workers; use tls:// with the distributed security config (README, Operations)",
                    address)


def rerun_with_configured_runner(flow_obj: Any, parallel: ParallelConfig) -> Any | None:
    """None when the running flow already uses the configured task runner; else `flow_obj` with it (the caller
    returns `that(...)`: a subflow run on the right runner). So every entry point honours
    `parallel.task_runner`: the CLI, `reproduce`, and deployments whose decorator default is the thread pool."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    current = type(ctx.task_runner).__name__ if ctx and ctx.task_runner else None
    wanted = "DaskTaskRunner" if parallel.task_runner == "dask" else "ThreadPoolTaskRunner"
    if current is None or current == wanted:
        return None
    print(f"{flow_obj.name}: re-entering on the {parallel.task_runner} task runner"
          f"{f' at {parallel.dask_address}' if parallel.dask_address else ''}")
    return flow_obj.with_options(task_runner=task_runner_for(parallel))


def gather_with_progress(futures: list[Any], what: str,
                         tally: dict[str, dict[str, int]] | None = None) -> list[dict[str, Any]]:
    """Results of shard futures in order, reporting shards done (with an ETA) to the log, a terminal bar and
    a Prefect progress artifact; at the end one line says how many shards were reused and how many redone
    (also added to `tally[what]` for the run's summary)."""
    from tasks.common import progress_reporter

    report = progress_reporter(what)
    results, reused = [], 0
    for i, future in enumerate(futures, 1):
        results.append(future.result())
        reused += shard_was_reused(future, results[-1])
        report(i / max(1, len(futures)), f"{i}/{len(futures)} shards")
    if not futures:
        report(1.0, "no shards")
    count_shards(what, reused, len(futures) - reused, tally)
    return results


def shard_was_reused(future: Any, result: dict[str, Any]) -> bool:
    """A shard task served from Prefect's cache (state Cached), or one that found its output in the catalog."""
    state = getattr(future, "state", None)
    return bool(result.get("reused")) or getattr(state, "name", "") == "Cached"


def count_shards(what: str, reused: int, redone: int, tally: dict[str, dict[str, int]] | None = None) -> None:
    """Log (and add to `tally`) how many shards of a stage were reused from an earlier run and how many redone."""
    print(f"{what}: {reused + redone} shard(s), {reused} reused, {redone} redone")
    if tally is not None:
        tally[what] = {"reused": reused, "redone": redone}


def device_name(cfg: SlamConfig) -> str:
    return pick_device(cfg.run.device).type


# The slam_core source each stage runs: its fingerprint changes when that code changes (and, through the
# upstream fingerprints, everything downstream of it), but not when unrelated code does.
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "corpus": ("corpora", "schemas.py"),
    "plan-recordings": ("synth",),
    "synth": ("synth", "audio/io.py", "schemas.py"),
    "synth-pairs": ("synth", "audio/io.py", "schemas.py"),
    "segments": ("audio", "schemas.py"),
    "kmeans": ("units", "audio/io.py"),
    "units": ("units", "audio/io.py", "schemas.py"),
    "pair-units": ("units", "audio/io.py", "schemas.py"),
    "init": ("lm/model.py", "lm/vocab.py"),
    "pretrain": ("lm",),
    "dpo": ("lm",),
    "eval": ("eval/pairs.py", "lm/vocab.py"),
    "generate": ("eval/generate.py", "lm/vocab.py"),
    "report": ("eval",),
    # the interleaved path (flows/interleaved.py)
    "interleave-init": ("lm/interleave_model.py", "lm/interleave.py", "lm/text_tokenizer.py", "lm/model.py"),
    "token-docs": ("lm/interleave.py", "lm/interleave_data.py", "lm/interleave_stage.py", "align/words.py"),
    "cross-modal": ("eval/cross_modal.py", "eval/pairs.py", "lm/interleave.py", "lm/interleave_stage.py"),
    "cm-generate": ("eval/cm_generate.py", "eval/generate.py", "eval/text_metrics.py", "eval/genppl.py",
                    "eval/cross_modal.py", "lm/interleave.py", "lm/interleave_stage.py"),
}


def fp(stage: str, cfg: SlamConfig, sections: tuple[str, ...], *upstream: str, **extra: Any) -> str:
    """Fingerprint of a stage from its config sections, the master seed, extra keys, upstream fingerprints
    and the version of the code it runs."""
    config = {"sections": json.loads(cfg.section_json(*sections)), "seed": cfg.run.seed, **extra}
    return fingerprint(stage, config, upstream, code=code_version(STAGE_CODE[stage]))


def run_from_command_line(flow_fn: Any, doc: str | None) -> None:
    """`python -m flows.<name> --preset P [--data-root DIR] [--set k=v ...]` for any slam flow; the config is
    validated before the flow starts, and a user error is one line (exit 2), as with `slam run`."""
    import argparse
    import sys

    from flows.cli_common import error_line
    from slam_core.config import parse_override

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke", help="named preset (smoke, slam, slam_scaled, slam_large, rehearsal)")
    parser.add_argument("--data-root", default=None, help="artifact root (default $SLAM_DATA_ROOT or ./slam-data)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. train.budget_s=60 (repeatable)")
    args = parser.parse_args()
    try:
        overrides = dict(parse_override(o) for o in args.overrides) or None
        load_config(args.preset, overrides, args.data_root)
    except Exception as err:
        if (line := error_line(err)) is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(2)
    from flows.temporary_server import one_writer_when_temporary

    one_writer_when_temporary()
    print(json.dumps(flow_fn(preset=args.preset, overrides=overrides, data_root=args.data_root), indent=2,
                     default=str))
