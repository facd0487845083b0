"""Shard-parallel preprocessing on Prefect's Dask task runner gives the same outputs as the thread pool."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest
from shared_data import REAL_SPEECH

from slam_core.config import ParallelConfig

pytest.importorskip("prefect_dask")


def test_runner_choice_follows_the_config():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.common import task_runner_for

    threads = task_runner_for(ParallelConfig(task_runner="threads", max_workers=3))
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    local = task_runner_for(ParallelConfig(task_runner="dask", max_workers=2))
    assert isinstance(local, DaskTaskRunner)
    assert local.cluster_kwargs["dashboard_address"].startswith("127.0.0.1:")  # never 0.0.0.0:8787
    assert local.cluster_kwargs["host"] == "127.0.0.1" and local.cluster_kwargs["n_workers"] == 2
    remote = task_runner_for(ParallelConfig(task_runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert remote.address == "tcp://10.0.0.5:8786"


@pytest.mark.slow
def test_prepare_source_local_on_dask_equals_threads(prefect_harness, tmp_path, monkeypatch):
    from flows import common, data_sources

    made = []  # the runners the flow re-entered with
    real = common.task_runner_for
    monkeypatch.setattr(common, "task_runner_for", lambda parallel: made.append(real(parallel)) or made[-1])

    speech = sorted(REAL_SPEECH.glob("*.flac"))
    if len(speech) < 2:
        pytest.skip(f"shared real speech not found under {REAL_SPEECH}")
    corpus = tmp_path / "corpus" / "spk"
    corpus.mkdir(parents=True)
    for i, src in enumerate(speech[:2] * 2):  # four files -> four shards of one file each
        shutil.copy(src, corpus / f"utt{i}.flac")
    (corpus / "broken.flac").write_bytes(b"not audio")
    monkeypatch.setitem(data_sources.SHARD_FILES, "local", 1)  # planned in the flow process

    threads = data_sources.prepare_source("local", local_dir=str(corpus.parent), data_root=str(tmp_path / "a"))
    assert made == []  # the thread pool is the flow's own runner: no re-entry
    dask = data_sources.prepare_source("local", local_dir=str(corpus.parent), data_root=str(tmp_path / "b"),
                                       task_runner="dask", max_workers=2)
    assert [type(r).__name__ for r in made] == ["DaskTaskRunner"]
    assert len(threads["shards"]) == len(dask["shards"]) == 5
    assert threads["segments"] == dask["segments"] > 0
    assert [q[1] for q in dask["quarantined"]] == ["unreadable"] == [q[1] for q in threads["quarantined"]]
    for a, b in zip(threads["shards"], dask["shards"]):
        assert pq.read_table(a).equals(pq.read_table(b))
        assert open(a, "rb").read() == open(b, "rb").read()  # byte-identical shards
