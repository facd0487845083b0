"""Config loading shared by every flow: preset + overrides + data root -> validated SlamConfig."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from slam_core.atomic import write_text_atomic
from slam_core.config import SlamConfig, apply_overrides
from slam_core.device import pick_device
from slam_core.fingerprint import code_version, fingerprint
from slam_core.presets import get_preset

log = logging.getLogger(__name__)


def load_config(preset: str, overrides: dict[str, Any] | None = None, data_root: str | None = None) -> SlamConfig:
    """Build the preset, apply dotted overrides and the data root, validate, and check derived values."""
    cfg = apply_overrides(get_preset(preset), overrides or {})
    if data_root:
        cfg.run.data_root = str(Path(data_root).expanduser().resolve())
    cfg.run.data_root = str(cfg.data_root)  # freeze: tasks must never depend on the worker's cwd or env
    cfg.resolve()
    return cfg


def save_resolved(cfg: SlamConfig, name: str) -> Path:
    """Write the resolved config beside the run's outputs (the receipt of what ran)."""
    out = cfg.data_root / "runs" / cfg.run.name / f"{name}.config.json"
    resolved = cfg.resolve() | {"code_version": code_version()}
    write_text_atomic(out, json.dumps(resolved, indent=2, sort_keys=True))
    return out


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
}


def fp(stage: str, cfg: SlamConfig, sections: tuple[str, ...], *upstream: str, **extra: Any) -> str:
    """Fingerprint of a stage from its config sections, the master seed, extra keys, upstream fingerprints
    and the version of the code it runs."""
    config = {"sections": json.loads(cfg.section_json(*sections)), "seed": cfg.run.seed, **extra}
    return fingerprint(stage, config, upstream, code=code_version(STAGE_CODE[stage]))


def run_from_command_line(flow_fn: Any, doc: str | None) -> None:
    """`python -m flows.<name> --preset P [--data-root DIR] [--set k=v ...]` for any slam flow."""
    import argparse

    from slam_core.config import parse_override

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke", help="named preset (smoke, slam, slam_scaled, slam_large)")
    parser.add_argument("--data-root", default=None, help="artifact root (default $SLAM_DATA_ROOT or ./slam-data)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. train.budget_s=60 (repeatable)")
    args = parser.parse_args()
    overrides = dict(parse_override(o) for o in args.overrides) or None
    print(json.dumps(flow_fn(preset=args.preset, overrides=overrides, data_root=args.data_root), indent=2,
                     default=str))
