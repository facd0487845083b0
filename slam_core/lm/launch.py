"""Multi-process pre-training: the parent side (`launch_pretrain` starts torchrun) and the per-rank entry point.

    python -m torch.distributed.run --standalone --nproc_per_node N -m slam_core.lm.launch SPEC.json

The spec (written by the parent) holds everything `train.pretrain` needs. Each rank trains its slice; rank 0
writes checkpoints, metrics and `result.json` (the pretrain summary plus every rank's parameter checksum,
which must agree under DDP). Rank 0 prints `SLAM_PROGRESS <fraction> <message>` lines that the parent turns
into progress callbacks. A failed or killed job leaves its checkpoints, so launching again resumes.
"""

from __future__ import annotations

import collections
import gc
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from slam_core.atomic import write_text_atomic
from slam_core.config import ModelConfig, TrainConfig

log = logging.getLogger(__name__)

PROGRESS_PREFIX = "SLAM_PROGRESS "
RESULT_FILE = "result.json"
TAIL_LINES = 400  # of the job's output, kept for the failure report
TAIL_REPORT_LINES = 40
# torchrun's agent logs in glog form ("E1130 05:01:53.415000 23892 .../torch/distributed/elastic/...")
AGENT_LOG = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S*torch/distributed/")
FIELD = re.compile(r"^  (rank|exitcode|traceback) *: (.*)$", re.MULTILINE)  # of the root-cause block
AGENT_FAILURE = re.compile(r"^[IWEF]\d{4} .*torch/distributed/elastic/.*(failed \(exitcode|closing signal)")


class DistributedTrainingError(RuntimeError):
    """The torchrun job failed; the message holds the exit code and the tail of its output."""


def torchrun_command(nproc: int, spec_path: Path) -> list[str]:
    """torchrun (as `python -m torch.distributed.run`, so the same interpreter) on one node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "slam_core.lm.launch", str(spec_path)]


def launch_pretrain(init_dir: Path, shard_paths: list[Path], model_cfg: ModelConfig, train_cfg: TrainConfig,
                    run_dir: Path, seed: int, device: str, nproc: int, fsdp: bool = False,
                    progress: Callable[[float, str], None] | None = None,
                    stop_after_steps: int | None = None, env: dict[str, str] | None = None,
                    val_shards: dict[str, list[Path]] | None = None,
                    cache_dir: Path | None = None) -> dict[str, Any]:
    """Run `train.pretrain` in `nproc` torchrun processes and return rank 0's summary (+ "rank_param_checksums")."""
    from slam_core.lm.distributed import per_rank_grad_accum

    per_rank_grad_accum(train_cfg.grad_accum, nproc)  # fail here, before starting processes
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"init_dir": str(init_dir), "shard_paths": [str(p) for p in shard_paths],
            "model_cfg": model_cfg.model_dump(mode="json"), "train_cfg": train_cfg.model_dump(mode="json"),
            "run_dir": str(run_dir), "seed": seed, "device": device, "fsdp": fsdp,
            "stop_after_steps": stop_after_steps,
            "val_shards": {k: [str(p) for p in v] for k, v in (val_shards or {}).items()},
            "cache_dir": str(cache_dir) if cache_dir is not None else None}
    result_path = run_dir / RESULT_FILE
    result_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="slam-launch-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        cmd = torchrun_command(nproc, spec_path)
        log.info("launching %s", " ".join(cmd))
        child_env = {**os.environ, **(env or {})}
        if device == "cpu":  # each process gets its share of the cores
            child_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        tail = _run_streaming(cmd, child_env, progress)
        code = tail.pop()
    if code != 0 or not result_path.exists():
        report = failure_report(tail)
        cause = root_cause_line(report)
        raise DistributedTrainingError(f"torchrun with {nproc} processes exited with code {code}"
                                       + ("" if code else f" but wrote no {result_path}")
                                       + (f": {cause}" if cause else "") + "\n" + report)
    return json.loads(result_path.read_text())


def _run_streaming(cmd: list[str], env: dict[str, str], progress: Callable[[float, str], None] | None) -> list:
    """Run `cmd`, echo its output to our stderr, forward progress lines; returns the last lines + exit code."""
    tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(PROGRESS_PREFIX):
                fraction, _, message = line[len(PROGRESS_PREFIX):].strip().partition(" ")
                if progress is not None:
                    progress(float(fraction), message)
                continue
            sys.stderr.write(line)
            tail.append(line)
        code = proc.wait()
    return [*tail, code]


def failure_report(lines: list[str], rank_lines: int = 30) -> str:
    """What a failed torchrun job says about its failure: the agent's root-cause block (which rank, exit code or
    signal, the rank's traceback when it had one) and the ranks' own last lines before the agent took over.

    The agent's report (its log lines and its own traceback through torch.distributed.run) would otherwise fill
    the tail and push out the line that explains the failure, e.g. a C++ `terminate called ...` from a rank."""
    first_agent = next((i for i, line in enumerate(lines) if AGENT_FAILURE.search(line)), None)
    if first_agent is None:
        return "last output:\n" + "".join(lines[-TAIL_REPORT_LINES:])
    ranks = [line for line in lines[:first_agent] if not AGENT_LOG.match(line) and line.strip()]
    root: list[str] = []
    for line in lines[first_agent:]:
        if root and line.startswith("====="):
            break
        if root or line.startswith("Root Cause"):
            root.append(line)
    return ("".join(root) or "(torchrun printed no root cause)\n") + "last output of the ranks:\n" + \
        "".join(ranks[-rank_lines:])


def root_cause_line(report: str) -> str | None:
    """'rank R: <exception line or signal>' from a `failure_report`'s root-cause block; None without one."""
    root_block = report.partition("last output of the ranks:")[0]
    fields = dict(FIELD.findall(root_block))
    if "rank" not in fields:
        return None
    cause = fields.get("traceback", "")
    if cause.startswith("Traceback"):  # a Python error (the rank's error file): its last line names it
        cause = next((line.strip() for line in reversed(root_block.splitlines()) if line.startswith("  ")
                      and line.strip() and not line.startswith("   ")), cause)
    return f"rank {fields['rank'].split()[0]}: {cause or 'exit code ' + fields.get('exitcode', '?')}"


def _print_progress(fraction: float, message: str) -> None:
    print(f"{PROGRESS_PREFIX}{fraction:.6f} {message}", flush=True)


@record  # a rank's Python exception reaches torchrun's root-cause report with its traceback
def main(argv: list[str] | None = None) -> int:
    """Per-rank entry point (under torchrun)."""
    from slam_core.lm import distributed, train

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m slam_core.lm.launch SPEC.json (started by torchrun)", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    env = distributed.env_from_torchrun(fsdp=bool(spec["fsdp"]))
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format=f"[rank {env.rank}] %(levelname)s %(name)s: %(message)s")
    try:
        summary = train.pretrain(Path(spec["init_dir"]), [Path(p) for p in spec["shard_paths"]],
                                 ModelConfig.model_validate(spec["model_cfg"]),
                                 TrainConfig.model_validate(spec["train_cfg"]), Path(spec["run_dir"]), spec["seed"],
                                 device=spec["device"], progress=_print_progress,
                                 stop_after_steps=spec["stop_after_steps"], dist_env=env,
                                 val_shards={k: [Path(p) for p in v] for k, v in spec.get("val_shards", {}).items()},
                                 cache_dir=Path(spec["cache_dir"]) if spec.get("cache_dir") else None)
        checksums = [None] * env.world_size
        if env.enabled:
            dist.all_gather_object(checksums, summary["param_checksum"])
        else:
            checksums = [summary["param_checksum"]]
        if env.is_main:
            summary["rank_param_checksums"] = checksums
            summary["world_size"] = env.world_size
            write_text_atomic(Path(spec["run_dir"]) / RESULT_FILE, json.dumps(summary, indent=2))
    finally:
        # FSDP's sharded parameters hold the process group's pending gloo work in reference cycles: free them
        # while the interpreter is whole, before the group goes away
        gc.collect()
        distributed.teardown()
    return 0


def _exit_now(code: int) -> None:
    """Leave without interpreter finalisation: gloo's worker threads could otherwise still be running when
    C++ static objects are destroyed, and abort a rank that has finished ("terminate called without an active
    exception", in 2 of 40 two-rank FSDP launches on CPU). Everything the parent reads is on disk by now: the
    result, or on failure torch elastic's error file (written by @record)."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _run_rank() -> None:
    """main(), leaving through _exit_now whether it returns or raises (a failed rank exits 1 after its traceback)."""
    try:
        code = main()
    except Exception:
        traceback.print_exc()
        code = 1
    _exit_now(code)


if __name__ == "__main__":
    _run_rank()
