"""`slam report serve [--port N] [--data-root DIR ...]`: serve the HTML reports of one or more data roots on
127.0.0.1, so the report link in the Prefect UI opens in a browser (a browser will not follow a file:// link
from a web page). Registered in flows/cli.py with `add_report_parser(sub)`.

Each run's report has its own URL, `http://127.0.0.1:PORT/<root tag>/<run>/index.html`, where the root tag
names the data root (`slam_core.run_summary.root_tag`). A link of a data root this server does not serve gets a
404 page saying so and how to serve it, never another root's report.
"""

from __future__ import annotations

import argparse
import html
import os
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def resolve_root(data_root: str | None) -> Path:
    """The data root resolved as every flow resolves it ($SLAM_DATA_ROOT, else ./slam-data)."""
    return Path(data_root or os.environ.get("SLAM_DATA_ROOT") or "slam-data").expanduser().resolve()


def reports_dir(data_root: str | None) -> Path:
    """<data root>/reports."""
    return resolve_root(data_root) / "reports"


def served_roots(data_roots: list[str | None]) -> dict[str, Path]:
    """{root tag: data root} of the roots to serve (the default root when none is given)."""
    from slam_core.run_summary import root_tag

    roots = [resolve_root(r) for r in (data_roots or [None])]
    return {root_tag(r): r for r in roots}


class ReportHandler(SimpleHTTPRequestHandler):
    """Static files of `<root>/reports` under `/<root tag>/`; `/` lists every served report."""

    roots: dict[str, Path] = {}
    quiet = True

    def _route(self) -> bool:
        """Point the handler at the requested root's reports; False (a 404 already sent) when not served."""
        parts = unquote(urlsplit(self.path).path).lstrip("/").split("/", 1)
        if parts == [""]:
            self._index()
            return False
        tag = parts[0]
        if tag not in self.roots:
            served = ", ".join(f"{t} = {r}" for t, r in self.roots.items())
            self.send_error(404, "report of a data root this server does not serve",
                            f"The link names data root '{tag}'; this `slam report serve` serves {served}. Start "
                            f"`slam report serve --data-root <that root>` (the run's report artifact names its "
                            f"root), or give this one another --data-root.")
            return False
        self.directory = str(self.roots[tag] / "reports")
        rest = self.path.split("/", 2)[2] if self.path.count("/") >= 2 else ""
        self.path = "/" + rest
        return True

    def _index(self) -> None:
        items = []
        for tag, root in self.roots.items():
            runs = sorted(p.parent.name for p in (root / "reports").glob("*/index.html"))
            links = "".join(f'<li><a href="/{tag}/{html.escape(r)}/index.html">{html.escape(r)}</a></li>' for r in runs)
            items.append(f"<h2>{html.escape(str(root))}</h2><ul>{links or '<li>no reports yet</li>'}</ul>")
        body = ("<!doctype html><title>slam reports</title><h1>slam reports</h1>" + "".join(items)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self._route():
            super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        if self._route():
            super().do_HEAD()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
        if not self.quiet:
            super().log_message(format, *args)


def make_server(roots: dict[str, Path] | Path, port: int, quiet: bool = True) -> ThreadingHTTPServer:
    """A server of the reports of `roots` ({tag: data root}; a bare Path is one data root), bound to 127.0.0.1
    only (port 0: any free port)."""
    if isinstance(roots, Path):
        from slam_core.run_summary import root_tag

        roots = {root_tag(roots): roots}
    handler = type("BoundReportHandler", (ReportHandler,), {"roots": dict(roots), "quiet": quiet})
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


def cmd_report_serve(args: argparse.Namespace) -> int:
    from slam_core.errors import InputError
    from slam_core.run_summary import report_port, report_url

    roots = served_roots(args.data_root)
    for root in roots.values():
        if not (root / "reports").is_dir():
            raise InputError(f"no reports yet under {root}", "--data-root",
                             "run `slam run reproduce` (or evaluate) with this data root first, or pass the data "
                             "root the run wrote to")
    server = make_server(roots, report_port(args.port), quiet=not args.verbose)
    port = server.server_address[1]
    print(f"serving the reports of {len(roots)} data root(s) at http://127.0.0.1:{port}/ (Ctrl-C stops)")
    for root in roots.values():
        for run in sorted(p.parent.name for p in (root / "reports").glob("*/index.html")):
            print(f"  {report_url(run, root, port)}")
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
    serve.add_argument("--data-root", action="append", default=[],
                       help="artifact root whose reports to serve (repeatable: one server for several roots; "
                            "default $SLAM_DATA_ROOT, else ./slam-data)")
    serve.set_defaults(func=cmd_report_serve)
    return serve
