"""Real corpora, offline: LibriSpeech / Libri-Light archives in their real layouts served over local HTTP,
hub datasets from a local hub-layout dir, local folders of real speech, eval-set layouts, the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from corpus_fixtures import (FileServer, flac_bytes, librilight_members, librispeech_members, tar_gz, tone,
                             write_tree)

from data_catalog import Catalog
from slam_core.audio.io import decode_audio_bytes, read_segment_audio
from slam_core.config import VadConfig
from slam_core.corpora import hub, librilight, librispeech, sources
from slam_core.corpora.download import ChecksumMismatchError
from slam_core.corpora.eval_sets import check_eval_set
from slam_core.corpora.local import prepare_local
from slam_core.schemas import SEGMENTS
from shared_data import REAL_SPEECH as SHARED_REAL_SPEECH

REAL_SPEECH = str(SHARED_REAL_SPEECH)


def _with_checksum(monkeypatch, source: str, part: str, data: bytes) -> None:
    """Point the registry's checksum for `part` at the test archive (the real published one cannot match)."""
    src = sources.SOURCES[source]
    parts = tuple(dataclasses.replace(p, sha256=hashlib.sha256(data).hexdigest(), md5=None) if p.name == part else p
                  for p in src.parts)
    monkeypatch.setitem(sources.SOURCES, source, dataclasses.replace(src, parts=parts))


# ---- registry ---------------------------------------------------------------------------------------------
def test_registry_urls_checksums_and_errors():
    ls = sources.get_source("librispeech")
    assert all(p.md5 and len(p.md5) == 32 for p in ls.parts)  # OpenSLR md5sum.txt, all seven parts
    assert ls.url("dev-clean") == "https://www.openslr.org/resources/12/dev-clean.tar.gz"
    assert ls.url("dev-clean", "http://mirror.local/ls/") == "http://mirror.local/ls/dev-clean.tar.gz"
    assert sources.get_source("librilight").url("small") == "https://dl.fbaipublicfiles.com/librilight/data/small.tar"
    for src in sources.SOURCES.values():
        assert src.licence and src.layout and src.description
        assert (src.kind == "hub") == bool(src.hub_id)
    with pytest.raises(KeyError, match="train-clean-100"):
        sources.select_parts(ls, ["train-clean-101"])
    with pytest.raises(KeyError, match="librispeech"):
        sources.get_source("libripseech")


def test_mirror_archive_with_wrong_published_checksum_is_refused(tmp_path):
    members, _ = librispeech_members("dev-clean")
    with FileServer({"dev-clean.tar.gz": tar_gz(members)}) as srv:
        with pytest.raises(ChecksumMismatchError, match="42e2234ba48799c1f50f24a7926300a1|76f87d09"):
            librispeech.download_librispeech(tmp_path, "dev-clean", mirror=f"{srv.base}/files")
    assert not (tmp_path / "dev-clean").exists()


# ---- LibriSpeech + hub through the Prefect flow -------------------------------------------------------------
def _hub_dir(tmp_path) -> tuple[object, list[str]]:
    texts = ["once upon a time", "there was a cat", "the end"]
    audio = [{"bytes": flac_bytes(tone(0.6 + 0.2 * i, 300 + 50 * i)), "path": f"{i}.flac"} for i in range(3)]
    audio.append({"bytes": b"garbage", "path": "bad.flac"})
    table = pa.table({"audio": audio, "text": texts + ["broken"]})
    root = tmp_path / "stinystories_hub"
    (root / "data").mkdir(parents=True)
    pq.write_table(table, root / "data" / "data-00000-of-00001.parquet")
    return root, texts


def test_prepare_source_flow_librispeech_over_http_and_hub_local_dir(prefect_harness, tmp_path, monkeypatch):
    from flows.data_sources import prepare_source

    members, texts = librispeech_members("dev-clean", bad_utterance=True)
    archive = tar_gz(members)
    _with_checksum(monkeypatch, "librispeech", "dev-clean", archive)
    root = tmp_path / "root"
    with FileServer({"dev-clean.tar.gz": archive}, drop_after=4000) as srv:
        result = prepare_source("librispeech", ["dev-clean"], mirror=f"{srv.base}/drop", data_root=str(root))
        assert [r for _, r in srv.requests][:2] == [None, "bytes=4000-"]  # dropped mid-file, resumed
    assert result["segments"] == 5 and result["reused"] == 0
    assert [q[0].endswith("84-121123-0002.flac") for q in result["quarantined"]] == [True]
    table = pq.read_table(root / "segments/librispeech/dev-clean/segments-00000.parquet")
    assert table.schema.equals(SEGMENTS)
    rows = table.to_pylist()
    assert {r["segment_id"]: r["text"] for r in rows} == {k: v for k, v in texts.items() if k != "84-121123-0002"}
    assert rows[0]["end_s"] == pytest.approx(0.5) and rows[0]["speaker"] == "19"
    assert (root / "raw/librispeech/dev-clean/LibriSpeech/dev-clean/19/198/19-198-0000.flac").is_file()

    catalog = Catalog(root / "catalog.duckdb")
    segs = catalog.artifacts(stage="segments")
    assert len(segs) == 1 and segs[0]["rows"] == 5 and segs[0]["audio_seconds"] == pytest.approx(2 * 0.5 + 2 * 0.75 + 1.0)
    assert len(catalog.artifacts(stage="raw")) == 1
    assert [(q["reason"], q["dataset"]) for q in catalog.quarantined("segments")] == [("unreadable", "librispeech")]

    again = prepare_source("librispeech", ["dev-clean"], mirror="http://127.0.0.1:9/unreachable", data_root=str(root))
    assert again["segments"] == 5  # extracted copy found, shards taken from the catalog/cache: nothing fetched

    hub_dir, hub_texts = _hub_dir(tmp_path)
    hub_result = prepare_source("stinystories", local_dir=str(hub_dir), data_root=str(root))
    assert hub_result["segments"] == 3 and hub_result["quarantined"][0][1] == "unreadable"
    hub_rows = pq.read_table(hub_result["shards"][0]).to_pylist()
    assert [r["text"] for r in hub_rows] == hub_texts
    # read in place from the Parquet cell: no FLAC copy is written anywhere under the data root
    assert hub_rows[1]["source_path"] == f"{(hub_dir / 'data' / 'data-00000-of-00001.parquet').resolve()}#audio:1"
    wave = read_segment_audio(hub_rows[1]["source_path"], hub_rows[1]["start_s"], hub_rows[1]["end_s"])
    expected = decode_audio_bytes(pq.read_table(hub_dir / "data").column("audio").to_pylist()[1]["bytes"])
    assert np.array_equal(wave, expected) and len(wave) / 16_000 == pytest.approx(hub_rows[1]["end_s"], abs=1e-3)
    assert not [f for f in root.rglob("*.flac") if "stinystories" in str(f)]

    # People's Speech test (a GenPPL prompt domain): its test/ Parquet read in place, listed as prompts in order
    from slam_core.config import EvalConfig
    from slam_core.eval.prompts import cut_s, prompt_sources

    ps_dir = tmp_path / "peoples_speech_hub"
    (ps_dir / "test").mkdir(parents=True)
    ps_audio = [{"bytes": flac_bytes(tone(2.0 + i, 200 + 40 * i)), "path": f"{i}.flac"} for i in range(2)]
    pq.write_table(pa.table({"id": ["a", "b"], "audio": ps_audio, "duration_ms": [2000, 3000], "text": ["x", "y"]}),
                   ps_dir / "test" / "test-00000-of-00001.parquet")
    ps = prepare_source("peoples_speech", local_dir=str(ps_dir), data_root=str(root))
    assert ps["segments"] == 2 and "/segments/peoples_speech/test/" in ps["shards"][0]
    sources = prompt_sources("peoples_speech", EvalConfig(n_generate=5), root)
    assert [s.file_s for s in sources] == pytest.approx([2.0, 3.0], abs=1e-2)
    cut, how = cut_s(sources[1], 3.0, True)
    assert (cut, how) == (3.0, "fixed") and len(read_segment_audio(sources[1].audio, None, cut)) == 48_000


def test_hub_without_local_copy_offline_names_repo_and_local_dir(tmp_path):
    with pytest.raises(hub.HubUnavailableError, match=r"slprl/sTinyStories.*--local-dir"):
        hub.fetch_hub_dataset("slprl/sTinyStories", tmp_path / "dl", revision=None)
    with pytest.raises(FileNotFoundError, match="no \\*.parquet"):
        hub.fetch_hub_dataset("slprl/sTinyStories", tmp_path / "dl", local_dir=tmp_path)


# ---- Libri-Light ------------------------------------------------------------------------------------------
def test_merge_voice_activity_follows_cut_by_vad_rule():
    spans = [[0.0, 10.0], [11.0, 21.0], [22.0, 32.0], [33.0, 80.0], [81.0, 82.0]]
    # 10+10 = 20 <= 25, +10 would be 30 > 25 -> cut; a 47 s span stands alone; the last 1 s joins nothing.
    assert librilight.merge_voice_activity(spans, 25.0) == [(0.0, 21.0), (22.0, 32.0), (33.0, 80.0), (81.0, 82.0)]
    assert librilight.merge_voice_activity(spans, 1000.0) == [(0.0, 82.0)]
    assert librilight.merge_voice_activity([], 30.0) == []


def test_librilight_download_extract_and_segment(tmp_path):
    members, vad = librilight_members("small")
    members["small/207/emma_1234/04_broken.flac"] = flac_bytes(tone(1.0))
    members["small/207/emma_1234/04_broken.json"] = b"{not json"
    with FileServer({"small.tar": tar_gz(members)}) as srv:
        subset_dir = librilight.download_librilight(tmp_path / "raw", "small", mirror=f"{srv.base}/files")
        n_requests = len(srv.requests)
        assert librilight.download_librilight(tmp_path / "raw", "small", mirror=f"{srv.base}/files") == subset_dir
        assert len(srv.requests) == n_requests  # already extracted: nothing fetched
    results = librilight.prepare_librilight(tmp_path / "raw", tmp_path / "seg", ["small"], target_len_s=3.0)
    assert [b[1] for b in results[0]["bad"]] == ["bad_vad_json"]
    rows = pq.read_table(results[0]["path"]).to_pylist()
    by_file: dict[str, list] = {}
    for r in rows:
        by_file.setdefault(r["source_path"].split("small/")[-1][:-5], []).append((r["start_s"], r["end_s"]))
    assert by_file == {rel: librilight.merge_voice_activity(spans, 3.0) for rel, spans in vad.items()}
    assert by_file["100/sea_fairies_0812/01_baum"] == [(0.2, 2.1), (2.4, 5.5)]  # 1.6 s + 1.5 > 3 cuts; 1.5 + 1.5 = 3 does not
    assert results[0]["audio_seconds"] == pytest.approx(3 * 7.0)
    assert {r["speaker"] for r in rows} == {"100", "207"}


# ---- local folder of real speech ----------------------------------------------------------------------------
def test_prepare_local_on_real_speech_with_transcript_and_bad_file(tmp_path):
    src = tmp_path / "my_audio" / "reader"
    src.mkdir(parents=True)
    for name in ("audio1.flac", "audio2.flac"):
        shutil.copy(f"{REAL_SPEECH}/{name}", src / name)
    (src / "audio1.txt").write_text("a transcript\nof audio one\n")
    (src / "broken.wav").write_bytes(b"RIFF....not a wav")
    cfg = VadConfig(max_segment_s=30.0, min_silence_s=5.0)  # long silence needed: one segment per short file
    [result] = prepare_local(tmp_path / "my_audio", tmp_path / "seg", cfg)
    assert [(b[0].endswith("broken.wav"), b[1]) for b in result["bad"]] == [(True, "unreadable")]
    rows = pq.read_table(result["path"]).to_pylist()
    assert sorted(r["segment_id"] for r in rows) == ["reader-audio1-0000", "reader-audio2-0000"]
    texts = {r["segment_id"]: r["text"] for r in rows}
    assert texts == {"reader-audio1-0000": "a transcript of audio one", "reader-audio2-0000": None}
    for r in rows:
        assert 0 <= r["start_s"] < r["end_s"] <= sf.info(r["source_path"]).duration + 1e-3
    assert result["audio_seconds"] == pytest.approx(14.085 + 15.945, abs=0.01)


# ---- eval sets --------------------------------------------------------------------------------------------
def _wav(path, rate: int = 16_000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(rate // 10, dtype=np.float32), rate)


def test_eval_set_layout_checks(tmp_path):
    for name in ("0_pos", "1_neg", "2_pos", "3_neg"):
        _wav(tmp_path / "ref" / "sSC" / f"{name}.wav")
    assert check_eval_set(tmp_path / "ref", "ssc")["pairs"] == 2
    for i in range(3):
        for j in (0, 1):
            _wav(tmp_path / "ref" / "salmon" / "gender_consistency" / f"sample_{i}_{j}.wav")
    assert check_eval_set(tmp_path / "ref", "salmon")["parts"] == {"gender_consistency": 3}
    _wav(tmp_path / "ref" / "tSC" / "0_a.wav", rate=24_000)
    _wav(tmp_path / "ref" / "tSC" / "1_b.wav", rate=24_000)
    with pytest.raises(ValueError, match="24000 Hz"):
        check_eval_set(tmp_path / "ref", "tsc")
    with pytest.raises(FileNotFoundError, match="sblimp"):
        check_eval_set(tmp_path / "ref", "sblimp")


# ---- CLI --------------------------------------------------------------------------------------------------
def test_cli_data_prepare_dry_run_lists_urls_and_sizes(tmp_path, capsys):
    from flows.cli_data import add_data_parser

    parser = argparse.ArgumentParser(prog="slam")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "prepare", "librispeech", "--subsets", "dev-clean", "train-clean-100",
                              "--mirror", "http://mirror.local/ls", "--dry-run", "--data-root", str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "http://mirror.local/ls/dev-clean.tar.gz (~337.9 MB" in out
    assert "http://mirror.local/ls/train-clean-100.tar.gz (~6.4 GB" in out and "checksum: sha256" in out
    assert "total to fetch: ~6.7 GB" in out
    assert not (tmp_path / "raw").exists()  # a dry run fetches and writes nothing
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "prepare", "nosuchsource"])
