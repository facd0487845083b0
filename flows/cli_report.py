"""`slam report serve [--port N] [--data-root DIR]`: serve `<data root>/reports/` on 127.0.0.1 so the report
link in the Prefect UI (http://127.0.0.1:PORT/<run>/index.html) opens in a browser; a browser will not follow
a file:// link from a web page. Registered in flows/cli.py with `add_report_parser(sub)`.
"""

from __future__ import annotations

import argparse
import functools
import os
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def reports_dir(data_root: str | None) -> Path:
    """<data root>/reports, the data root resolved as every flow resolves it."""
    root = data_root or os.environ.get("SLAM_DATA_ROOT") or "slam-data"
    return Path(root).expanduser().resolve() / "reports"


def make_server(directory: Path, port: int) -> ThreadingHTTPServer:
    """A static file server of `directory`, bound to 127.0.0.1 only (port 0: any free port)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(directory))
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


def cmd_report_serve(args: argparse.Namespace) -> int:
    from slam_core.run_summary import DEFAULT_REPORT_PORT, REPORT_PORT_ENV

    directory = reports_dir(args.data_root)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no reports yet — run `slam run reproduce` (or evaluate) with this "
                                f"data root first, or pass --data-root")
    port = args.port if args.port is not None else int(os.environ.get(REPORT_PORT_ENV) or DEFAULT_REPORT_PORT)
    server = make_server(directory, port)
    runs = sorted(p.parent.name for p in directory.glob("*/index.html"))
    print(f"serving {directory} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
    for run in runs:
        print(f"  http://127.0.0.1:{server.server_address[1]}/{run}/index.html")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `slam report serve` on the top-level subparsers."""
    rep = subparsers.add_parser("report", help="the HTML reports")
    rep_sub = rep.add_subparsers(dest="report_command", required=True)
    serve = rep_sub.add_parser("serve", help="serve <data root>/reports on 127.0.0.1 (the Prefect UI links here)")
    serve.add_argument("--port", type=int, default=None,
                       help="port on 127.0.0.1 (default $SLAM_REPORT_PORT, else 8765; the flows link to the same)")
    serve.add_argument("--data-root", default=None, help="artifact root (default $SLAM_DATA_ROOT, else ./slam-data)")
    serve.set_defaults(func=cmd_report_serve)
    return serve
