"""The CPU twin of the offline GPU host (scripts/gpu_twin.py): it holds only the host's distributions and the carry,
so a wheel removed from the carry fails the GPU check's probe with the module named, here and not on the GPU host.
The two modules are the ones the GPU host run of 2026-12-04 failed on (nltk for auto-BLEU, pytz for duckdb's
TIMESTAMP columns)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import gpu_twin  # noqa: E402


def _probe(venv: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "scripts/gpu_probe.py"], cwd=REPO, env=gpu_twin.twin_env(venv),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    """The fast twin of this test run's venv with the whole carry."""
    venv = tmp_path_factory.mktemp("twin") / "venv"
    assert gpu_twin.main(["fast", "--venv", str(venv), "--source", sys.prefix]) == 0
    return venv


@pytest.mark.slow
def test_the_twin_holds_only_the_hosts_distributions_and_the_carry(twin: Path) -> None:
    from importlib.metadata import distributions

    held = {gpu_twin.canon(d.metadata["Name"]) for d in distributions(path=[str(gpu_twin.site_packages(twin))])}
    assert held <= gpu_twin.allowed()
    assert {"torch", "transformers", "nltk", "pytz", "duckdb", "pydantic"} <= held
    assert not held & {"prefect", "spacy", "silero-vad", "fastapi"}  # installed in .venv, absent on the GPU host
    versions = {gpu_twin.canon(d.metadata["Name"]): d.version
                for d in distributions(path=[str(gpu_twin.site_packages(twin))])}
    assert versions["transformers"] == "5.17.0"  # the host's, not .venv's


@pytest.mark.slow
def test_the_probe_passes_with_the_whole_carry(twin: Path) -> None:
    out = _probe(twin)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_a_wheel_removed_from_the_carry_fails_naming_its_module(twin: Path, tmp_path: Path) -> None:
    carry = tmp_path / "gpu-carry.txt"
    carry.write_text("\n".join(line for line in gpu_twin.CARRY.read_text().splitlines()
                               if not line.startswith(("nltk==", "pytz=="))) + "\n")
    short = tmp_path / "short"
    assert gpu_twin.main(["fast", "--venv", str(short), "--source", str(twin), "--carry", str(carry)]) == 0
    out = _probe(short)
    assert out.returncode == 2
    assert "auto-BLEU tokenizer: missing module 'nltk'" in out.stderr
    assert "catalog timestamps: missing module 'pytz'" in out.stderr


def test_the_hosts_list_is_the_shared_doc_and_the_carry_has_no_duplicates() -> None:
    doc = REPO.parent / "shared" / "docs" / "gpu-host.md"
    names = [gpu_twin.spec_name(s) for s in gpu_twin.requirements(gpu_twin.HOST)]
    if doc.exists():
        listed = doc.read_text().split("nothing else is importable):\n", 1)[1].split(".\n", 1)[0]
        assert sorted(names) == sorted(gpu_twin.canon(n.strip()) for n in listed.replace("\n", " ").split(","))
    carried = [gpu_twin.spec_name(s) for s in gpu_twin.carry_specs()]
    assert len(carried) == len(set(carried)) and all("==" in s for s in gpu_twin.carry_specs())
    assert {"nltk", "pytz", "duckdb", "kokoro", "liger-kernel", "openai-whisper"} <= set(carried)


@pytest.mark.skipif(os.environ.get("SLAM_CHECK_CARRY") != "1", reason="downloads the carry (SLAM_CHECK_CARRY=1)")
def test_the_carry_with_the_repository_fits_the_device_tools_64_mib(tmp_path: Path) -> None:
    out = subprocess.run(["bash", "scripts/gpu_carry.sh", str(tmp_path / "carry")], cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "MiB of the 64 MiB" in out.stdout
