"""`slam plan`: print what a run would do (datasets, config, budget, resources, ETA per stage), doing nothing.

    slam plan --preset slam [--set KEY=VALUE ...] [--gpu H100] [--mfu 0.4] [--json]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from slam_core.lm.metrics import BF16_PEAK_FLOPS

GB = 1024 ** 3


def _hours(s: float | None) -> str:
    if s is None:
        return "unknown"
    return f"{s / 3600:,.1f} h" if s >= 3600 else f"{s / 60:,.1f} min" if s >= 60 else f"{s:,.0f} s"


def _count(x: float | None) -> str:
    if x is None:
        return "-"
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:,.2f}{suffix}"
    return f"{x:,.0f}"


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flatten(f"{prefix}.{k}" if prefix else k, v)]
    return [(prefix, json.dumps(value))]


def print_plan(plan: dict[str, Any]) -> None:
    """The plan as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    dev, budget = plan["device"], plan["budget"]
    console.print(f"[bold]slam plan[/bold] run {plan['run']}, data root {plan['data_root']} — nothing was written")
    if plan["catalog"]["unread"]:
        console.print(f"[yellow]{plan['catalog']['unread']}: 'in catalog' is empty[/yellow]")
    t = Table(title="Datasets")
    for col in ("name", "role", "split", "hours", "tokens", "in catalog"):
        t.add_column(col)
    for s in plan["datasets"]:
        cat = s["in_catalog"]
        t.add_row(s["name"], s["role"], s["split"], f"{s['hours']:,.1f}", _count(s["tokens"]),
                  f"{cat['unit_shards']} shards, {_count(cat['tokens'])} tokens" if cat else "-")
    console.print(t)
    for name, (source, basis) in {s["name"]: (s["source"], s["estimate"]) for s in plan["datasets"]}.items():
        console.print(f"  {name}: {source}; size: {basis}")
    mix = plan["mix"]
    console.print(f"Mix of {', '.join(mix['train_sets'])}: {mix['rule']}; estimated token shares "
                  + ", ".join(f"{k} {v:.1%}" for k, v in mix["token_share_estimate"].items()))
    how = (f"assumed MFU {budget['assumed_mfu']:.0%}" if budget["assumed_mfu"] is not None
           else "given tokens/s" if budget["tokens_per_s"] else "unknown throughput")
    console.print(f"Device: {dev['n']} x {dev['name']} ({dev['how']}); "
                  f"{_count(budget['flops_per_token'])}FLOP per token; {how}: "
                  f"{_count(budget['tokens_per_s'])} tokens/s -> {_count(budget['steps'])} steps, "
                  f"{_count(budget['tokens'])} tokens in {_hours(budget['budget_s'])}")
    sched = plan["schedule"]
    console.print(f"Step: {sched['examples_per_step']} examples (chunks of <= {plan['config']['model']['context_len']} "
                  f"tokens, ~{sched['tokens_per_example']:.0f} each = ~{_count(sched['tokens_per_step'])} tokens), "
                  f"packed into buffers ~{sched['buffer_fill']:.0%} full")
    if "paper" in budget:
        p = budget["paper"]
        console.print(f"Paper (Table 4): {p['steps']:,} steps on 1 x {p['gpu']} = {_count(p['tokens'])} tokens "
                      f"(MFU {p['implied_mfu']:.0%} by this FLOP count)")
    st = Table(title="Stages")
    for col in ("stage", "ETA", "basis"):
        st.add_column(col)
    for s in plan["stages"]:
        st.add_row(s["name"], _hours(s["eta_s"]), s["basis"])
    st.add_row("total (known)", _hours(plan["eta_total_s"]), ", ".join(plan["eta_unknown"]) and
               f"not counted: {', '.join(plan['eta_unknown'])}")
    console.print(st)
    pre = plan["preprocessing"]
    units, synth = pre["units"], pre["synthesis"]
    units_line = (f"units {units['gpu_hours']:,.1f} GPU-h ({units['audio_hours']:,.0f} h of audio at "
                  f"{units['x_realtime']:,.0f}x on {units['measured']['device']}, {units['measured']['date']}; "
                  f"{units['note']})" if "gpu_hours" in units else f"units: {units['note']}")
    synth_line = (f"synthesis {synth['gpu_hours']:,.1f} GPU-h ({synth['audio_hours']:,.0f} h at {synth['x_realtime']:,.0f}x "
                  f"on {synth['measured']['device']}, {synth['measured']['date']})" if "measured" in synth
                  else "synthesis: none")
    align = pre.get("alignment")
    align_line = "" if align is None else (
        f"; Whisper alignment {align['gpu_hours']:,.1f} GPU-h ({align['audio_hours']:,.0f} h)"
        if align["gpu_hours"] is not None else
        f"; Whisper alignment of {align['audio_hours']:,.0f} h: unmeasured, not counted" if align["unmeasured"] else "")
    console.print(f"Preprocessing: {units_line}; {synth_line}{align_line}; training {pre['training']['gpu_hours']:,.1f} "
                  f"GPU-h on {pre['training']['device']} -> {pre['total_gpu_hours']:,.1f} GPU-h in all")
    rt = Table(title="Resources")
    for col in ("resource", "needed", "available", "parts"):
        rt.add_column(col)
    res = plan["resources"]
    for name, r in res.items():
        avail = r.get("free_bytes", r.get("available_bytes"))
        parts = ", ".join(f"{k} {v / GB:,.1f} GB" for k, v in r["parts"].items() if v)
        rt.add_row(name, f"{r['needed_bytes'] / GB:,.1f} GB", "unknown" if avail is None else f"{avail / GB:,.1f} GB",
                   parts)
    console.print(rt)
    for warning in plan["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    for m in plan["missing_inputs"]:
        skip = m["stage"] == "eval" and plan["config"]["eval"]["allow_skip"]
        console.print(f"[red]missing[/red] ({'will be skipped' if skip else 'the run would stop'}): "
                      f"{m['what']} — {m['field']} — {m['detail']}")
    ct = Table(title="Resolved config (as `slam run` records it)")
    ct.add_column("field")
    ct.add_column("value")
    for key, value in _flatten("", plan["config"]):
        ct.add_row(key, value)
    console.print(ct)


def cmd_plan(args: argparse.Namespace) -> int:
    from flows.common import load_config
    from flows.cli_common import parse_overrides
    from slam_core.plan import build_plan

    cfg = load_config(args.preset, parse_overrides(args.overrides), args.data_root)
    plan = build_plan(cfg, gpu=args.gpu, mfu=args.mfu, tokens_per_s=args.tokens_per_s)
    if args.json:
        print(json.dumps(plan, indent=2, default=str))
    else:
        print_plan(plan)
    return 0


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"--mfu must be in (0, 1], got {text}")
    return value


def add_plan_parser(sub: Any) -> None:
    from slam_core.plan import ASSUMED_MFU

    p = sub.add_parser("plan", help="print the whole run (datasets, config, budget, resources, ETA per stage) "
                                    "without doing or writing anything")
    p.add_argument("--preset", default="slam", help="named preset: smoke, slam, slam_scaled, slam_large (default slam)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. train.budget_s=60 (repeatable)")
    p.add_argument("--data-root", default=None,
                   help="artifact root whose catalog is read (default $SLAM_DATA_ROOT, else ./slam-data); read only")
    p.add_argument("--gpu", default=None, choices=sorted(BF16_PEAK_FLOPS),
                   help="plan for this GPU (default: the detected one, else the paper's device for the preset)")
    p.add_argument("--mfu", type=_fraction, default=ASSUMED_MFU,
                   help=f"assumed model FLOPs utilisation of pre-training (default {ASSUMED_MFU})")
    p.add_argument("--tokens-per-s", type=float, default=None,
                   help="measured pre-training tokens/s to use instead of MFU x peak (e.g. on CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys datasets, config, stages, ...)")
    p.set_defaults(func=cmd_plan)
