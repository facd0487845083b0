"""The published SpokenSwag passes SlamKit's repetition filter while it is converted (`slam synth spokenswag
--input <published copy>`): pairs whose bigram auto-BLEU of `prompt_text + " " + chosen_text` is >= 0.3 are
dropped, quarantined as 'repetitive' and counted in `slam catalog summary` and the run report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from data_catalog import Catalog
from slam_core.corpora.text_hub import repetition_score

# (prompt_text, chosen_text, kept at 0.3): the join matters, as in SlamKit's filter
PAIRS = [
    ("a man sits on a bench", "he reads a paper", True),          # nothing repeats: 0
    ("x y c", "x y d x y e f g", False),                           # joined: 'x y' at 3 of 10 bigrams = 0.3
    ("x y c", "d e x y f g h i", True),                            # joined: 2 of 10 = 0.2
    ("the dog runs", "the dog runs the dog runs the dog runs", False),
]


def _cell(seconds: float) -> dict:
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(np.arange(int(24000 * seconds)) / 24000 * 2 * np.pi * 220)).astype(np.float32),
             24000, format="WAV")
    return {"bytes": buf.getvalue(), "path": "x.wav"}


def published_copy(root: Path) -> Path:
    """A published-layout slprl/SpokenSwag copy: data/train-00000-of-00001.parquet with audio structs, texts and
    speaker (SlamKit's `create_spoken_swag` columns), no pair id."""
    rows = [{"prompt": _cell(0.3), "chosen": _cell(0.4), "rejected": _cell(0.4), "prompt_text": p,
             "chosen_text": c, "rejected_text": "she flies away", "speaker": "af_heart"} for p, c, _ in PAIRS]
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "train-00000-of-00001.parquet")
    return root


def test_repetition_score_is_slamkits_rule() -> None:
    scores = [repetition_score(p, c) for p, c, _ in PAIRS]
    assert scores[:3] == [0.0, pytest.approx(0.3), pytest.approx(0.2)]
    assert repetition_score("x y c", "x y d x y e f g") >= 0.3 > repetition_score("", "x y d x y e f g")


def _synth(main, src: Path, root: Path, capsys, *overrides: str) -> dict:
    argv = ["synth", "spokenswag", "--input", str(src), "--workers", "1", "--data-root", str(root)]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_published_spokenswag_filtered_counted_in_catalog_and_report(tmp_path: Path, capsys) -> None:
    from flows.cli import main
    from slam_core.eval.report import write_report
    from tasks.evaluate import data_notes

    src, root = published_copy(tmp_path / "published"), tmp_path / "root"
    out = _synth(main, src, root, capsys)
    assert out["input_kind"] == "published_spokenswag" and out["rows"] == 2
    assert out["quarantined"] == {"repetitive": 2}
    shard = pq.read_table(out["shards"][0])
    assert shard.column("chosen_text").to_pylist() == [c for _, c, keep in PAIRS if keep]
    assert Path(out["shards"][0]).parent == root / "synth" / "spokenswag" / "train"  # where the slam preset reads

    catalog = Catalog(root / "catalog.duckdb")
    dropped = [q for q in catalog.quarantined("synth") if q["reason"] == "repetitive"]
    assert sorted(q["path"] for q in dropped) == ["train-00000-of-00001-000001", "train-00000-of-00001-000003"]
    assert "0.300 >= 0.3" in dropped[0]["detail"] and dropped[0]["dataset"] == "spokenswag"
    assert {"stage": "synth", "reason": "repetitive", "files": 2} in catalog.summary()["quarantine"]
    assert main(["catalog", "summary", "--data-root", str(root)]) == 0
    assert "repetitive" in capsys.readouterr().out

    # the run report of the slam preset (spokenswag_dir = synth/spokenswag/train under the data root)
    config = {"corpus": {"spokenswag_dir": "synth/spokenswag/train", "swag_max_auto_bleu": 0.3}}
    notes = data_notes(config, str(root))
    assert len(notes) == 1 and "2 in 1 shard(s)" in notes[0] and "2 pair(s) of the published set dropped" in notes[0]
    page = write_report(tmp_path / "report" / "index.html", "slam", None, [], None, config, data_notes=notes)
    text = page.read_text()
    assert "<h2>Data</h2>" in text and "2 pair(s) of the published set dropped" in text
    assert data_notes({"corpus": {"spokenswag_dir": None}}, str(root)) == []

    # reused as it is; a stricter threshold is another conversion (its own fingerprint), and the count follows it
    assert _synth(main, src, root, capsys)["reused_shards"] == 1
    strict = _synth(main, src, root, capsys, "corpus.swag_max_auto_bleu=0.1")
    assert strict["reused_shards"] == 0 and strict["rows"] == 1 and strict["quarantined"] == {"repetitive": 3}
    notes = data_notes({"corpus": {"spokenswag_dir": "synth/spokenswag/train", "swag_max_auto_bleu": 0.1}}, str(root))
    assert "1 in 1 shard(s)" in notes[0] and "3 pair(s) of the published set dropped" in notes[0]
