"""Stage progress is coalesced: the Prefect progress artifact (each update an event `--watch` prints) and the log."""

from __future__ import annotations

import logging

import tasks.common as common


def test_progress_artifact_moves_per_five_percent_or_thirty_seconds(monkeypatch, caplog):
    clock = [0.0]
    updates: list[float] = []
    monkeypatch.setattr(common.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(common, "create_progress_artifact", lambda progress, description: "artifact-id")
    monkeypatch.setattr(common, "update_progress_artifact",
                        lambda artifact_id, progress, description: updates.append(progress))
    report = common.progress_reporter("pre-training")
    with caplog.at_level(logging.INFO, logger=common.log.name):
        for step in range(1, 1001):  # 1,000 steps, four a second: 5 % every 12.5 s
            clock[0] += 0.25
            report(step / 1000, f"step {step}")
    assert 17 <= len(updates) <= 20 and updates[-1] == 100.0, updates  # about one per 5 %, not 1,000
    assert all(b - a >= 5.0 - 1e-6 for a, b in zip(updates, updates[1:-1]))  # and the end
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 10  # 10 %, 20 %, ... 100 %

    updates.clear()
    report = common.progress_reporter("DPO")
    for step in range(1, 101):  # slow work: 0.1 % a minute still shows it moving, every 30 s at most
        clock[0] += 60.0
        report(step / 1000, "")
    assert len(updates) == 100
