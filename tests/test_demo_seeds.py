"""The seed sweep behind README's "the demo over seeds" (scripts/demo_seeds.py): it reads each run's accuracies
from that run's catalog (latest checkpoint per stage) and writes their spread. The runs themselves are
`make demo` with another seed; here a fake run records results so only the script's own logic is tested."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from data_catalog import Catalog
from slam_core.paths import catalog_path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("demo_seeds", REPO / "scripts" / "demo_seeds.py")
demo_seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_seeds)

PRE = "/r/checkpoints/smoke/pretrain-aa/checkpoints/step-{:06d}"
DPO = "/r/checkpoints/smoke/dpo-bb/checkpoints/step-{:06d}"


def _record(root: Path, tsc_pre: float, tsc_dpo: float) -> None:
    cat = Catalog(catalog_path(root))
    cat.record_eval("smoke", PRE.format(40), "tsc_like", 0.40, 128, 0.3, 0.5)  # an earlier checkpoint: ignored
    cat.record_eval("smoke", PRE.format(460), "tsc_like", tsc_pre, 128, tsc_pre - 0.08, tsc_pre + 0.08)
    cat.record_eval("smoke", DPO.format(60), "tsc_like", tsc_dpo, 128, tsc_dpo - 0.08, tsc_dpo + 0.08)
    cat.record_eval("smoke", DPO.format(60), "genppl", 99.0, 4)  # not a pair accuracy: not in the sweep
    cat.record_eval("other-run", DPO.format(60), "tsc_like", 0.1, 128)  # another run name: ignored


def test_results_are_the_latest_checkpoint_of_each_stage(tmp_path: Path) -> None:
    _record(tmp_path, 0.65, 0.75)
    got = demo_seeds.seed_results(tmp_path)
    assert list(got) == ["dpo tsc_like", "pretrain tsc_like"]
    assert got["pretrain tsc_like"]["accuracy"] == 0.65 and got["dpo tsc_like"]["ci_low"] == pytest.approx(0.67)


def test_sweep_writes_each_seed_and_the_spread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    accuracies = {7: (0.60, 0.70), 8: (0.66, 0.76)}
    ran = []

    def fake_run(seed: int, data_root: Path, extra: list[str]) -> float:
        ran.append((seed, data_root.name, extra))
        _record(data_root, *accuracies[seed])
        return 12.0

    monkeypatch.setattr(demo_seeds, "run_seed", fake_run)
    out = tmp_path / "seeds.json"
    assert demo_seeds.main(["--seeds", "7", "8", "--root", str(tmp_path / "roots"), "--out", str(out),
                            "--set", "train.max_steps=10"]) == 0
    assert ran == [(7, "seed-7", ["--set", "train.max_steps=10"]), (8, "seed-8", ["--set", "train.max_steps=10"])]
    record = json.loads(out.read_text())
    assert [s["seed"] for s in record["per_seed"]] == [7, 8] and record["overrides"] == ["train.max_steps=10"]
    assert record["spread"]["dpo tsc_like"] == {"mean": 0.73, "min": 0.70, "max": 0.76, "runs": 2}
    assert record["spread"]["pretrain tsc_like"]["mean"] == pytest.approx(0.63)
    assert "mean 0.730, range 0.700-0.760 over 2 seeds" in capsys.readouterr().out
