"""`slam data prepare <source> [--subsets …] [--mirror URL] [--local-dir DIR] [--dry-run] [--data-root DIR]`.

Registered in flows/cli.py with `add_data_parser(sub)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n} B"


def format_plan(plan: list[dict]) -> str:
    """One line per part: what would be fetched, from where, about how big."""
    lines = []
    for e in plan:
        hours = f", ~{e['approx_hours']:g} h" if e.get("approx_hours") else ""
        check = f", checksum: {e['checksum']}" if e.get("checksum") else ""
        done = " [already extracted]" if e.get("already_extracted") else ""
        size = f"~{_human_bytes(e['approx_bytes'])}" if e.get("approx_bytes") else "size unknown"
        lines.append(f"{e['source']}/{e['part']}: {e['from']} ({size}{hours}{check}){done}")
    todo = [e for e in plan if not e.get("already_extracted") and not str(e.get("from", "")).startswith("local dir")]
    total = sum(e.get("approx_bytes") or 0 for e in todo)
    unknown = " + parts of unknown size" if any(not e.get("approx_bytes") for e in todo) else ""
    lines.append(f"total to fetch: ~{_human_bytes(total)}{unknown}")
    return "\n".join(lines)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from flows.cli_common import quiet_offline_env

    quiet_offline_env()
    from flows.data_sources import plan_source, prepare_source

    if args.local_dir and not Path(args.local_dir).expanduser().is_dir():  # refused before any flow starts
        raise FileNotFoundError(f"local copy not found — --local-dir {args.local_dir} — pass the directory that holds "
                                f"the {args.source} files, or leave --local-dir out to download them")
    if args.dry_run:  # no flow run (and no Prefect server) just to list a plan
        from slam_core.config import RunConfig, SlamConfig
        from slam_core.corpora.sources import get_source

        root = SlamConfig(run=RunConfig(data_root=args.data_root)).data_root
        src = get_source(args.source)
        if args.revision:
            src = dataclasses.replace(src, revision=args.revision)
        print(format_plan(plan_source(src, args.subsets, args.mirror, args.local_dir, root)))
        return 0
    from flows.temporary_server import one_writer_when_temporary

    one_writer_when_temporary()
    result = prepare_source(source=args.source, subsets=args.subsets or None, mirror=args.mirror,
                            local_dir=args.local_dir, dry_run=False, data_root=args.data_root, revision=args.revision)
    print(json.dumps(result, indent=2, default=str))
    return 0


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `slam data prepare …` on the top-level subparsers."""
    from slam_core.corpora.sources import EVAL_SETS, SOURCES

    data = subparsers.add_parser("data", help="fetch and prepare real speech corpora")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="download (or use a local copy of) a source and write segment shards")
    prep.add_argument("source", choices=sorted({**SOURCES, **EVAL_SETS}), help="which source")
    prep.add_argument("--subsets", nargs="+", default=None, metavar="PART",
                      help="parts to prepare, e.g. dev-clean train-clean-100 (default: the source's default parts)")
    prep.add_argument("--mirror", default=None, metavar="URL",
                      help="base URL replacing the official one (official file names are appended)")
    prep.add_argument("--local-dir", default=None, metavar="DIR",
                      help="directory already holding the source (nothing is downloaded)")
    prep.add_argument("--dry-run", action="store_true", help="list what would be fetched, with sizes, and stop")
    prep.add_argument("--revision", default=None, metavar="REV",
                      help="hub sources: commit hash, branch or tag (default: the commit recorded by the first fetch, "
                           "else main, resolved and recorded)")
    prep.add_argument("--data-root", default=None, help="artifact root (default $SLAM_DATA_ROOT, else ./slam-data)")
    prep.set_defaults(func=cmd_data_prepare)
    return prep
