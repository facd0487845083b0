"""DPO: token layout, loss against an independent computation with a frozen copy, training moves margins."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy
import csv
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from slam_core.config import DpoConfig, ModelConfig
from slam_core.lm.dpo import (collate_pairs, compute_reference_logps, dpo_loss, load_preference_pairs, pair_tokens,
                              sequence_logps, train_dpo)
from slam_core.lm.model import init_speech_lm, resolve_base
from slam_core.schemas import PREFERENCE_UNITS

MODEL = ModelConfig(base="tiny-qwen2", context_len=128, dtype="float32", tiny_hidden_size=64, tiny_layers=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Preference file: chosen continues the prompt's motif, rejected is random; plus one empty row."""
    root = tmp_path_factory.mktemp("dpo")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        motif = rng.integers(0, 50, 3)
        rows.append({"pair_id": f"p{i}", "prompt_units": np.resize(motif, rng.integers(5, 20)).tolist(),
                     "chosen_units": np.resize(motif, rng.integers(5, 15)).tolist(),
                     "rejected_units": rng.integers(0, 500, rng.integers(5, 15)).tolist()})
    rows.append({"pair_id": "empty", "prompt_units": [3], "chosen_units": [], "rejected_units": [4]})
    path = root / "preferences.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=PREFERENCE_UNITS), path)
    init = init_speech_lm(MODEL, resolve_base(MODEL, root), root / "init", seed=0)
    return {"root": root, "prefs": path, "init": Path(init["path"])}


def test_pair_tokens_layout_and_truncation():
    prompt, chosen, rejected = pair_tokens([0, 1, 2], [7, 8], [9], max_prompt_tokens=8, max_completion_tokens=8)
    assert prompt == [1, 2, 3, 4] and chosen == [9, 10, 1] and rejected == [11, 1]
    prompt, chosen, _ = pair_tokens(list(range(20)), list(range(20)), [1], max_prompt_tokens=8, max_completion_tokens=8)
    assert prompt == [1] + [u + 2 for u in range(13, 20)]  # BOS kept, the end of the prompt kept
    assert chosen == [u + 2 for u in range(8)]  # cut from the right


def _explicit_logp(model, prompt: list[int], completion: list[int]) -> float:
    """Sum of log p(completion token | all previous tokens), one unpadded sequence, token by token."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(float(logp[len(prompt) + j - 1, tok]) for j, tok in enumerate(completion))


def test_dpo_loss_matches_independent_computation(setup):
    pairs, skipped = load_preference_pairs(setup["prefs"], DpoConfig())
    assert len(pairs) == 24 and skipped == [("empty", "empty_units", "preferences.parquet: empty chosen_units")]
    reference = AutoModelForCausalLM.from_pretrained(setup["init"]).eval()
    frozen = copy.deepcopy(reference)
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # a policy that differs from the reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch_pairs = pairs[:5]
    ref = compute_reference_logps(reference, batch_pairs, micro_batch_size=2, device=torch.device("cpu"),
                                  dtype=torch.float32)
    with torch.no_grad():
        pol = sequence_logps(policy.eval(), collate_pairs(batch_pairs))
    losses, margins = dpo_loss(pol, torch.cat([ref[:, 0], ref[:, 1]]), beta=0.1)
    for i, (prompt, chosen, rejected) in enumerate(batch_pairs):
        pc, pr = _explicit_logp(policy, prompt, chosen), _explicit_logp(policy, prompt, rejected)
        rc, rr = _explicit_logp(frozen, prompt, chosen), _explicit_logp(frozen, prompt, rejected)
        expected_margin = 0.1 * ((pc - rc) - (pr - rr))
        expected_loss = math.log1p(math.exp(-expected_margin))
        assert abs(float(margins[i]) - expected_margin) < 1e-4
        assert abs(float(losses[i]) - expected_loss) < 1e-5
    assert float(losses.mean()) != pytest.approx(math.log(2), abs=1e-4)  # the policy really differs


def test_train_dpo_grows_margin_and_checkpoints(setup, tmp_path):
    cfg = DpoConfig(max_steps=10, budget_s=600, lr=2e-3, warmup_steps=2, micro_batch_size=4, grad_accum=2, beta=0.1)
    out = train_dpo(setup["init"], setup["prefs"], MODEL, cfg, tmp_path / "run", seed=0, device="cpu")
    assert out["steps"] == 10 and out["pairs_seen"] == 80 and [s[0] for s in out["skipped"]] == ["empty"]
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert float(rows[0]["loss"]) == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
    assert float(rows[1]["lr"]) == 2e-3 and float(rows[0]["lr"]) == 1e-3
    # margins on all pairs: initial policy (0 by construction) vs the trained checkpoint
    pairs, _ = load_preference_pairs(setup["prefs"], cfg)
    ref = torch.load(tmp_path / "run" / "reference_logps.pt", weights_only=True)
    trained = AutoModelForCausalLM.from_pretrained(out["final_checkpoint"]).eval()
    with torch.no_grad():
        pol = sequence_logps(trained, collate_pairs(pairs))
    _, margins = dpo_loss(pol, torch.cat([ref[:, 0], ref[:, 1]]), beta=0.1)
    assert float(margins.mean()) > 0.05 and float((margins > 0).float().mean()) > 0.8
    assert out["final_loss"] < math.log(2) - 0.02


def test_train_dpo_resume_continues(setup, tmp_path):
    cfg = DpoConfig(max_steps=4, budget_s=600, lr=2e-3, warmup_steps=1, micro_batch_size=4, grad_accum=1)
    straight = train_dpo(setup["init"], setup["prefs"], MODEL, cfg, tmp_path / "a", seed=0, device="cpu")
    half = train_dpo(setup["init"], setup["prefs"], MODEL, cfg.model_copy(update={"max_steps": 2}),
                     tmp_path / "b", seed=0, device="cpu")
    assert half["steps"] == 2
    resumed = train_dpo(setup["init"], setup["prefs"], MODEL, cfg, tmp_path / "b", seed=0, device="cpu")
    assert resumed["steps"] == 4 and resumed["pairs_seen"] == straight["pairs_seen"]
    wa = AutoModelForCausalLM.from_pretrained(straight["final_checkpoint"]).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(resumed["final_checkpoint"]).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_train_dpo_stops_inside_budget_with_fake_clock(setup, tmp_path):
    ticks = iter(range(10_000))
    clock = lambda: float(next(ticks))  # noqa: E731 — every clock read advances 1 s
    cfg = DpoConfig(budget_s=15.0, lr=1e-3, warmup_steps=1, micro_batch_size=4, grad_accum=1)
    out = train_dpo(setup["init"], setup["prefs"], MODEL, cfg, tmp_path / "run", seed=0, device="cpu", clock=clock)
    assert 3 <= out["steps"] and out["elapsed_s"] <= 15.0
    state = (Path(out["final_checkpoint"]) / "state.json").read_text()
    assert f'"step": {out["steps"]}' in state


def test_train_dpo_stops_after_max_epochs_and_constant_schedule(setup, tmp_path):
    """Slam (scaled) trains DPO for 2 epochs (paper §6); the constant schedule is SlamKit's effective one."""
    cfg = DpoConfig(max_epochs=1.0, budget_s=600, lr=1e-3, warmup_steps=2, lr_scheduler="constant",
                    micro_batch_size=4, grad_accum=1)
    out = train_dpo(setup["init"], setup["prefs"], MODEL, cfg, tmp_path / "run", seed=0, device="cpu")
    n_pairs = len(load_preference_pairs(setup["prefs"], cfg)[0])
    assert out["pairs_seen"] >= n_pairs > out["pairs_seen"] - 4
    lrs = [float(r["lr"]) for r in csv.DictReader((tmp_path / "run" / "metrics.csv").open())]
    assert lrs[:2] == [5e-4, 1e-3] and set(lrs[2:]) == {1e-3}


def test_run_micro_batch_regroups_the_same_pairs(setup, tmp_path):
    """dpo.run_micro_batch only changes how a step's pairs are grouped into forwards: same losses, same weights."""
    out = {}
    for micro in (4, 2, 8):
        cfg = DpoConfig(max_steps=3, budget_s=600, lr=2e-3, warmup_steps=1, micro_batch_size=4, grad_accum=2,
                        run_micro_batch=micro)
        out[micro] = train_dpo(setup["init"], setup["prefs"], MODEL, cfg, tmp_path / f"m{micro}", seed=0, device="cpu")
        assert out[micro]["micro_batch_size"] == micro and out[micro]["pairs_seen"] == 24
    assert out[2]["final_loss"] == pytest.approx(out[4]["final_loss"], abs=1e-5)
    assert out[8]["final_loss"] == pytest.approx(out[4]["final_loss"], abs=1e-5)
    with pytest.raises(ValueError, match="does not divide"):
        train_dpo(setup["init"], setup["prefs"], MODEL, DpoConfig(max_steps=1, micro_batch_size=4, grad_accum=2,
                                                                  run_micro_batch=3), tmp_path / "bad", seed=0,
                  device="cpu")
