"""The run's story: checkpoint names, the metric rows, the per-stage summary, and `slam report serve`."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from flows.cli_report import make_server, reports_dir, served_roots
from slam_core.run_summary import (
    checkpoint_label, metric_rows, report_url, root_tag, stage_rows, training_summary,
)


def test_checkpoint_labels_name_stage_step_and_fingerprint() -> None:
    assert checkpoint_label("/d/checkpoints/smoke/pretrain-1a2b3c4d/checkpoints/step-000460") == "pretrain step 460 (1a2b3c)"
    assert checkpoint_label("/d/checkpoints/smoke/dpo-ffee00/checkpoints/step-000020") == "dpo step 20 (ffee00)"
    assert checkpoint_label("/models/exported") == "exported"


def test_metric_rows_one_per_checkpoint_and_metric_with_proxies_and_skips_explained() -> None:
    pre, dpo = "/r/pretrain-aa/checkpoints/step-000010", "/r/dpo-bb/checkpoints/step-000002"
    rows = metric_rows([
        {"checkpoint": dpo, "metric": "tsc_like", "value": 0.65625, "n": 128, "ci_low": 0.57, "ci_high": 0.733},
        {"checkpoint": pre, "metric": "tsc_like", "value": 0.5625, "n": 128, "ci_low": 0.476, "ci_high": 0.645},
        {"checkpoint": pre, "metric": "genppl", "value": None, "n": 0, "ci_low": None, "ci_high": None,
         "details": json.dumps({"skipped": "no vocoder configured (eval.vocoder)"})},
        {"checkpoint": pre, "metric": "genppl_like", "value": 3.0, "n": 2, "ci_low": None, "ci_high": None,
         "details": json.dumps({"slamkit_difference": "empty transcripts are excluded"})},
    ])
    assert [(r["checkpoint"], r["metric"]) for r in rows] == [
        ("dpo step 2 (bb)", "tsc_like"), ("pretrain step 10 (aa)", "genppl"), ("pretrain step 10 (aa)", "genppl_like"),
        ("pretrain step 10 (aa)", "tsc_like")]
    assert "proxy of tSC" in rows[0]["note"] and rows[0]["value"] == 0.6562 and rows[0]["path"] == dpo
    assert rows[1]["note"] == "no vocoder configured (eval.vocoder)" and rows[1]["value"] is None
    assert rows[2]["note"] == "empty transcripts are excluded"


def test_stage_rows_from_the_training_metrics(tmp_path: Path) -> None:
    pre, dpo = tmp_path / "pretrain-aa", tmp_path / "dpo-bb"
    pre.mkdir()
    dpo.mkdir()
    (pre / "metrics.csv").write_text("step,loss,lr,grad_norm,tokens_per_s,mfu,tokens_seen,elapsed_s,val_loss\n"
                                     "5,6.0,0.001,1.0,1000,0.2,20480,3.6,\n10,5.0,0.001,1.0,3000,0.4,40960,7.2,\n"
                                     "10,,,,,,40960,7.2,5.5\n")
    (dpo / "metrics.csv").write_text("step,loss,lr,grad_norm,reward_margin,reward_accuracy,tokens_per_s,elapsed_s\n"
                                     "1,0.69,0.0005,0.1,0.0,0.5,800,1.8\n2,0.6,0.0005,0.1,0.3,0.7,1000,3.6\n")
    assert training_summary(pre / "metrics.csv") == {"steps": 10, "tokens": 40960, "final_loss": 5.0,
                                                     "val_loss": 5.5, "tokens_per_s": 2000.0, "mfu": pytest.approx(0.3),
                                                     "elapsed_s": 7.2}
    prepared = {"audio_hours": 1.8612, "segments": 400, "tokens": 155_551,
                "shards": {"unit extraction shards": {"reused": 3, "redone": 1}}}
    trained = {"pretrain": {"run_dir": str(pre), "reused": False}, "dpo": {"run_dir": str(dpo), "reused": True}}
    rows = {r["stage"]: r for r in stage_rows(prepared, trained, {"computed": 4})}
    assert rows["data"]["hours"] == 1.861 and rows["data"]["segments"] == 400 and rows["data"]["tokens"] == 155_551
    assert rows["data"]["shards"] == "unit extraction shards 3 reused, 1 redone"
    assert (rows["pre-training"]["steps"], rows["pre-training"]["val_loss"], rows["pre-training"]["mfu"]) == (10, 5.5, 0.3)
    assert rows["pre-training"]["hours"] == pytest.approx(0.002) and rows["pre-training"]["shards"] == "trained now"
    assert (rows["DPO"]["steps"], rows["DPO"]["final_loss"], rows["DPO"]["mfu"]) == (2, 0.6, None)
    assert rows["DPO"]["shards"] == "reused (recorded run)" and rows["evaluation"]["shards"] == "4 result(s) computed now"


def _fake_report(root: Path, run: str, text: str) -> None:
    (root / "reports" / run).mkdir(parents=True)
    (root / "reports" / run / "index.html").write_text(f"<h1>slam run: {run}</h1><p>{text}</p>")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_report_serve_serves_the_reports_dir_on_localhost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLAM_DATA_ROOT", str(tmp_path))
    _fake_report(tmp_path, "smoke", "pretrain step 460")
    assert reports_dir(None) == tmp_path.resolve() / "reports"
    server = make_server(served_roots([]), 0)
    host, port = server.server_address[:2]
    assert host == "127.0.0.1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("SLAM_REPORT_PORT", str(port))
        status, body = _get(report_url("smoke", tmp_path))
        assert status == 200 and b"slam run: smoke" in body
        status, body = _get(f"http://127.0.0.1:{port}/")  # the index links every report
        assert status == 200 and report_url("smoke", tmp_path).split(str(port))[1].encode() in body
    finally:
        server.shutdown()
        server.server_close()


def test_two_data_roots_have_their_own_report_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same run name in two data roots (both folders named slam-data): two URLs; each server answers only its
    own root's links, and a link of another root gets a 404 that says so, never the other root's report."""
    root_a, root_b = tmp_path / "a" / "slam-data", tmp_path / "b" / "slam-data"
    _fake_report(root_a, "smoke", "pretrain step 460")
    _fake_report(root_b, "smoke", "pretrain step 60")
    url_a, url_b = report_url("smoke", root_a, 1), report_url("smoke", root_b, 1)
    assert url_a != url_b and root_tag(root_a).startswith("slam-data-")
    only_a = make_server(served_roots([str(root_a)]), 0)
    both = make_server(served_roots([str(root_a), str(root_b)]), 0)
    for server in (only_a, both):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port_a, port_both = only_a.server_address[1], both.server_address[1]
        assert _get(report_url("smoke", root_a, port_a)) == (200, (root_a / "reports/smoke/index.html").read_bytes())
        status, body = _get(report_url("smoke", root_b, port_a))
        assert status == 404 and b"pretrain step 60" not in body and b"does not serve" in body
        assert b"pretrain step 460" in _get(report_url("smoke", root_a, port_both))[1]
        assert b"pretrain step 60" in _get(report_url("smoke", root_b, port_both))[1]
        assert _get(f"http://127.0.0.1:{port_a}/smoke/index.html")[0] == 404  # the old, ambiguous form
    finally:
        for server in (only_a, both):
            server.shutdown()
            server.server_close()


def test_report_serve_without_reports_says_what_to_do(tmp_path: Path) -> None:
    from flows.cli import main

    assert main(["report", "serve", "--data-root", str(tmp_path), "--port", "0"]) == 2
