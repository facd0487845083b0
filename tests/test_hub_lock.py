"""Hub datasets are pinned like a lock file: a branch is resolved to a commit once, then always read at it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slam_core.corpora import hub

COMMITS = iter(["a" * 40, "b" * 40])  # what "main" points at on the (fake) hub, first and second time


@pytest.fixture()
def fake_hub(monkeypatch):
    calls = {"info": [], "snapshot": []}

    def dataset_info(self, repo_id, revision=None, **_):
        calls["info"].append((repo_id, revision))
        return SimpleNamespace(sha=next(COMMITS))

    def snapshot_download(repo_id, repo_type, revision, local_dir, allow_patterns=None):
        calls["snapshot"].append((repo_id, repo_type, revision))
        (hub_dir := __import__("pathlib").Path(local_dir) / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": [revision]}), hub_dir / "train-00000.parquet")
        return local_dir

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_branch_is_resolved_once_then_read_at_the_recorded_commit(fake_hub, tmp_path):
    hub.fetch_hub_dataset("slprl/sTinyStories", tmp_path)
    lock = json.loads((tmp_path / hub.LOCK_FILENAME).read_text())
    assert lock == {"repo_id": "slprl/sTinyStories", "requested": None, "commit": "a" * 40}
    hub.fetch_hub_dataset("slprl/sTinyStories", tmp_path)  # upstream "main" has moved to b...: still a...
    assert fake_hub["info"] == [("slprl/sTinyStories", None)]
    assert [c[2] for c in fake_hub["snapshot"]] == ["a" * 40, "a" * 40]


def test_a_commit_hash_is_used_as_given_without_an_api_call(fake_hub, tmp_path):
    hub.fetch_hub_dataset("slprl/SpokenSwag", tmp_path, revision="c" * 40)
    assert fake_hub["info"] == [] and fake_hub["snapshot"][0][2] == "c" * 40
    assert json.loads((tmp_path / hub.LOCK_FILENAME).read_text())["commit"] == "c" * 40


def test_offline_fetch_names_the_local_dir_option(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubUnavailableError, match="--local-dir DIR"):
        hub.fetch_hub_dataset("slprl/salmon", tmp_path / "x", revision="d" * 40)
    assert not (tmp_path / "x" / hub.LOCK_FILENAME).exists()  # nothing recorded for a failed fetch
