"""Direct preference optimisation (sigmoid DPO) of a pre-trained speech LM on unit preference triples.

Tokens follow SlamKit's `tokenize_row`: prompt `[1] + (u + 2)`, chosen/rejected `(u + 2) + [1]`. The prompt
is cut from the left to `max_prompt_tokens` (keeping BOS and the end, the part next to the continuation);
completions are cut from the right to `max_completion_tokens`. Sequences are right-padded with PAD (to a
multiple of `PAD_MULTIPLE` on CUDA, so compiled layers see few shapes) and run without attention mask, each
row one segment for the packed kernels (causal attention never looks right, so right padding cannot change
earlier logits); only completion tokens are scored. Same speed path as pre-training: packed attention,
regional compile (dpo.compile), one host sync per step, metrics written off the training thread.

The reference model is the initial policy. Its log-probs of every chosen/rejected completion are computed
ONCE before training and stored in `run_dir/reference_logps.pt`, so no second model is kept in memory and a
resumed run still has the same reference.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from slam_core.atomic import atomic_path
from slam_core.config import DpoConfig, ModelConfig
from slam_core.device import pick_attn_implementation, pick_device, pick_dtype
from slam_core.errors import InputError
from slam_core.lm import tuning
from slam_core.lm.attention import cu_seqlens_from_positions, is_packed, packed_kwargs
from slam_core.lm.checkpoint import latest_checkpoint, restore_or_seed, rng_state, save_checkpoint
from slam_core.lm.distributed import DistEnv
from slam_core.lm.metrics import BackgroundReporter, MetricsLog
from slam_core.lm.model import load_speech_lm
from slam_core.lm.schedule import DPO_SCHEDULES
from slam_core.lm.step import autocast_for, weight_cast_scope
from slam_core.lm.vocab import BOS_ID, EOS_ID, PAD_ID, UNIT_OFFSET

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference_logps.pt"
PAD_MULTIPLE = 256  # CUDA: sequence widths rounded up to this, so compiled layers see at most a few shapes
METRIC_FIELDS = ["step", "loss", "lr", "grad_norm", "reward_margin", "reward_accuracy", "tokens_per_s", "elapsed_s"]


def pair_tokens(prompt_units: Sequence[int], chosen_units: Sequence[int], rejected_units: Sequence[int],
                max_prompt_tokens: int, max_completion_tokens: int) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) token ids with SlamKit's layout and the truncation described above."""
    prompt = [BOS_ID] + [int(u) + UNIT_OFFSET for u in prompt_units]
    if len(prompt) > max_prompt_tokens:
        prompt = [BOS_ID] + prompt[len(prompt) - (max_prompt_tokens - 1):]
    chosen = ([int(u) + UNIT_OFFSET for u in chosen_units] + [EOS_ID])[:max_completion_tokens]
    rejected = ([int(u) + UNIT_OFFSET for u in rejected_units] + [EOS_ID])[:max_completion_tokens]
    return prompt, chosen, rejected


def load_preference_pairs(path: Path, cfg: DpoConfig, vocab_size: int | None = None
                          ) -> tuple[list[tuple[list[int], list[int], list[int]]], list[tuple[str, str, str]]]:
    """Token triples of a PREFERENCE_UNITS file, plus (pair_id, reason, detail) of skipped rows.

    Rows with an empty unit list, or (given vocab_size) a unit the model cannot embed, are skipped.
    """
    try:
        table = pq.read_table(path, columns=["pair_id", "prompt_units", "chosen_units", "rejected_units"])
    except Exception as err:  # pyarrow raises several types for missing/corrupt files and columns
        raise ValueError(f"{path}: cannot read preference pairs ({err})") from None
    pairs, skipped = [], []
    for row in table.to_pylist():
        empty = [k for k in ("prompt_units", "chosen_units", "rejected_units") if not row[k]]
        if empty:
            skipped.append((row["pair_id"], "empty_units", f"{path.name}: empty {', '.join(empty)}"))
            continue
        triple = pair_tokens(row["prompt_units"], row["chosen_units"], row["rejected_units"],
                             cfg.max_prompt_tokens, cfg.max_completion_tokens)
        if vocab_size is not None and max(max(part) for part in triple) >= vocab_size:
            skipped.append((row["pair_id"], "unit_out_of_range", f"{path.name}: token >= vocab size {vocab_size}"))
            continue
        pairs.append(triple)
    if skipped:
        log.warning("%s: skipped %d preference pairs (e.g. %s)", path, len(skipped), skipped[0])
    return pairs, skipped


def collate_pairs(pairs: Sequence[tuple[list[int], list[int], list[int]]], pad_multiple: int = 1
                  ) -> dict[str, torch.Tensor]:
    """2B right-padded sequences (B chosen then B rejected), a mask of scored target positions, position ids
    and the segment boundaries of the packed kernels (one segment per row)."""
    seqs, starts = [], []
    for prompt, chosen, _ in pairs:
        seqs.append(prompt + chosen)
        starts.append(len(prompt))
    for prompt, _, rejected in pairs:
        seqs.append(prompt + rejected)
        starts.append(len(prompt))
    width = -(-max(len(s) for s in seqs) // pad_multiple) * pad_multiple
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (seq, start) in enumerate(zip(seqs, starts)):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, start:len(seq)] = True
    pos = torch.arange(width).expand(len(seqs), -1).contiguous()
    return {"input_ids": ids, "completion_mask": mask, "position_ids": pos, "cu_seqlens": cu_seqlens_from_positions(pos)}


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], attn_implementation: str = "sdpa"
                   ) -> torch.Tensor:
    """Sum of log p(token | prefix) over the completion tokens of each sequence, shape [2B]."""
    ids = batch["input_ids"]
    kwargs = {}
    if is_packed(attn_implementation):
        kwargs = {"position_ids": batch["position_ids"], **packed_kwargs(attn_implementation, batch, ids.shape[1])}
    logits = model(input_ids=ids, use_cache=False, **kwargs).logits[:, :-1].float()
    token_logps = torch.gather(F.log_softmax(logits, dim=-1), 2, ids[:, 1:, None]).squeeze(2)
    return (token_logps * batch["completion_mask"][:, 1:]).sum(dim=1)


def dpo_loss(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO loss and reward margin from [2B] log-probs (chosen half, then rejected half)."""
    n = policy_logps.shape[0] // 2
    policy_ratio = policy_logps[:n] - policy_logps[n:]
    reference_ratio = reference_logps[:n] - reference_logps[n:]
    margin = beta * (policy_ratio - reference_ratio)
    return -F.logsigmoid(margin), margin.detach()


@torch.no_grad()
def compute_reference_logps(model: torch.nn.Module, pairs: Sequence, micro_batch_size: int,
                            device: torch.device, dtype: torch.dtype, attn_implementation: str = "sdpa"
                            ) -> torch.Tensor:
    """[n_pairs, 2] (chosen, rejected) completion log-probs under `model` (the initial policy)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(pairs), micro_batch_size):
        chunk = pairs[i:i + micro_batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, _pad_multiple(device)).items()}
        with autocast_for(device, dtype):
            logps = sequence_logps(model, batch, attn_implementation).cpu()
        out.append(torch.stack([logps[:len(chunk)], logps[len(chunk):]], dim=1))
    model.train(was_training)
    return torch.cat(out).to(torch.float32)


class _PairOrder:
    """Seeded per-epoch permutation of pair indices with a resumable (epoch, position) cursor."""

    def __init__(self, n_pairs: int, seed: int, epoch: int = 0, pos: int = 0) -> None:
        self.n_pairs, self.seed, self.epoch, self.pos = n_pairs, seed, epoch, pos

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_pairs)
            grab = order[self.pos:self.pos + k - len(out)].tolist()
            out.extend(grab)
            self.pos += len(grab)
            if self.pos >= self.n_pairs:
                self.epoch, self.pos = self.epoch + 1, 0
        return out


def _pad_multiple(device: torch.device) -> int:
    return PAD_MULTIPLE if device.type == "cuda" else 1


def _load_or_compute_reference(run_dir: Path, model: torch.nn.Module, pairs: Sequence, cfg: DpoConfig,
                               device: torch.device, dtype: torch.dtype, attn_implementation: str) -> torch.Tensor:
    path = run_dir / REFERENCE_FILE
    if path.exists():
        ref = torch.load(path, weights_only=True)
        if ref.shape[0] != len(pairs):
            raise ValueError(f"{path} has {ref.shape[0]} pairs but the preference file has {len(pairs)}")
        return ref
    ref = compute_reference_logps(model, pairs, cfg.micro_batch_size, device, dtype, attn_implementation)
    with atomic_path(path) as tmp:
        torch.save(ref, tmp)
    return ref


def _reference_model(ckpt: Path | None, init_checkpoint: Path, run_dir: Path, model: torch.nn.Module, attn: str,
                     dev: torch.device) -> torch.nn.Module:
    """The model the reference log-probs come from: always the initial policy. A resumed run whose stored
    reference is gone recomputes it from `init_checkpoint`, never from the partly trained `model`."""
    if ckpt is None or (run_dir / REFERENCE_FILE).exists():
        return model  # fresh run (model is the initial policy), or the stored reference is loaded
    if not (Path(init_checkpoint) / "config.json").is_file():
        raise InputError("DPO reference log-probs are missing and the initial model they come from is gone",
                         run_dir / REFERENCE_FILE, f"restore {init_checkpoint}, or delete {run_dir} to restart DPO")
    log.warning("%s is missing: recomputing it from the initial model %s", run_dir / REFERENCE_FILE, init_checkpoint)
    return load_speech_lm(Path(init_checkpoint), attn).to(dev)


def train_dpo(init_checkpoint: Path, preference_path: Path, model_cfg: ModelConfig, dpo_cfg: DpoConfig,
              run_dir: Path, seed: int, device: str = "auto",
              progress: Callable[[float, str], None] | None = None, *,
              clock: Callable[[], float] = time.monotonic, cache_dir: Path | None = None) -> dict:
    """DPO from `init_checkpoint` (or resume from run_dir's latest checkpoint) within budget_s / max_steps.

    `cache_dir` keeps the probed pairs per forward pass per GPU model (dpo.run_micro_batch=auto).
    Returns {"final_checkpoint", "steps", "pairs_seen", "tokens_seen", "elapsed_s", "final_loss",
    "reward_margin", "skipped", "compile_s", "micro_batch_size", "attn_implementation"}.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    dtype = pick_dtype(model_cfg.dtype, dev)
    attn = pick_attn_implementation(model_cfg.attn_implementation, dev)
    ckpt = latest_checkpoint(run_dir)
    clock_start = clock()  # the budget covers the reference pass of a fresh run too
    if ckpt is None and (run_dir / REFERENCE_FILE).exists():
        (run_dir / REFERENCE_FILE).unlink()  # stale: a fresh run's reference is its own initial policy
    model = load_speech_lm(ckpt or Path(init_checkpoint), attn).to(dev)
    pairs, skipped = load_preference_pairs(Path(preference_path), dpo_cfg, model.config.vocab_size)
    if not pairs:
        raise ValueError(f"{preference_path}: no usable preference pairs ({len(skipped)} skipped)")
    reference = _load_or_compute_reference(run_dir, _reference_model(ckpt, init_checkpoint, run_dir, model, attn, dev),
                                           pairs, dpo_cfg, dev, dtype, attn)
    model.train()
    width = -(-(dpo_cfg.max_prompt_tokens + dpo_cfg.max_completion_tokens) // PAD_MULTIPLE) * PAD_MULTIPLE
    pairs_per_step = dpo_cfg.micro_batch_size * dpo_cfg.grad_accum
    micro = tuning.fit_micro_batch(model, dpo_cfg.run_micro_batch, dpo_cfg.micro_batch_size, pairs_per_step, 2, width,
                                   attn, dev, dtype, DistEnv(), cache_dir)
    if pairs_per_step % micro:
        raise ValueError(f"dpo.run_micro_batch={micro} does not divide the {pairs_per_step} pairs of a step "
                         f"(micro_batch_size x grad_accum)")
    compile_s = 0.0
    if tuning.compile_enabled(dpo_cfg.compile, dev):  # after the (eager, no-grad) reference pass
        tuning.compile_decoder_layers(model, dynamic=True)  # widths vary by pair: one compile, symbolic length
        compile_s = tuning.warm_up(model, 2 * micro, width, attn, dev, dtype)
        log.info("DPO: compiled the decoder layers in %.1f s (counted in the budget)", compile_s)
    optimizer = torch.optim.AdamW(model.parameters(), lr=dpo_cfg.lr, betas=tuple(dpo_cfg.betas), eps=dpo_cfg.eps,
                                  weight_decay=dpo_cfg.weight_decay, fused=dev.type == "cuda" or None,
                                  foreach=None if dev.type == "cuda" else True)
    schedule = DPO_SCHEDULES[dpo_cfg.lr_scheduler]
    order = _PairOrder(len(pairs), seed)
    step, pairs_seen, tokens_seen, elapsed0 = 0, 0, 0, 0.0
    restored = restore_or_seed(ckpt, seed)
    if restored is not None:
        state, info = restored
        optimizer.load_state_dict(state["optimizer"])
        order.epoch, order.pos = int(state["order"][0]), int(state["order"][1])
        step, pairs_seen, tokens_seen, elapsed0 = info["step"], info["pairs_seen"], info["tokens_seen"], info["elapsed_s"]
    loss, margin = None, None
    metrics = MetricsLog(run_dir / "metrics.csv", step if ckpt is not None else -1, METRIC_FIELDS)
    reporter = BackgroundReporter()
    t_start = (clock_start if ckpt is None else clock()) - elapsed0
    elapsed, last_ckpt_s, step_time_s, steps_this_call = clock() - t_start, elapsed0, 0.0, 0

    def save() -> Path:
        reporter.flush()
        trainer_state = {"optimizer": optimizer.state_dict(), "rng": rng_state(), "order": [order.epoch, order.pos]}
        info = {"pairs_seen": pairs_seen, "tokens_seen": tokens_seen, "elapsed_s": elapsed, "total_steps":
                dpo_cfg.max_steps, "loss": loss}
        return save_checkpoint(run_dir, step, model, trainer_state, info)

    saved_step, elapsed_loop0 = (step if ckpt is not None else -1), elapsed
    max_pairs = math.inf if dpo_cfg.max_epochs is None else dpo_cfg.max_epochs * len(pairs)
    try:
        while ((dpo_cfg.max_steps is None or step < dpo_cfg.max_steps) and pairs_seen < max_pairs
               and elapsed + step_time_s <= dpo_cfg.budget_s):
            t0 = clock()
            lr = schedule(step, dpo_cfg.lr, dpo_cfg.warmup_steps)  # a function of the step only: resumes exactly
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = [order.take(micro) for _ in range(pairs_per_step // micro)]  # same pairs, same order
            loss, margin, grad_norm, n_tokens = _dpo_step(model, optimizer, pairs, reference, idx, dpo_cfg, dev, dtype,
                                                          attn)
            step, pairs_seen, tokens_seen = step + 1, pairs_seen + sum(map(len, idx)), tokens_seen + n_tokens
            now = clock()
            elapsed, steps_this_call = now - t_start, steps_this_call + 1
            # predict the next step from the larger of the last and the mean step time, to stay inside the budget
            step_time_s = max(now - t0, (elapsed - elapsed_loop0) / steps_this_call)
            reporter.submit(metrics.append, {
                "step": step, "loss": round(loss, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
                "reward_margin": round(float(margin.mean()), 6),
                "reward_accuracy": round(float((margin > 0).float().mean()), 4),
                "tokens_per_s": round(n_tokens / max(now - t0, 1e-9), 1), "elapsed_s": round(elapsed, 3)})
            if progress is not None:
                frac = step / dpo_cfg.max_steps if dpo_cfg.max_steps else elapsed / dpo_cfg.budget_s
                frac = max(frac, pairs_seen / max_pairs)
                reporter.submit(progress, min(1.0, frac), f"dpo step {step} loss {loss:.4f}")
            if elapsed - last_ckpt_s >= dpo_cfg.checkpoint_every_s:
                save()
                saved_step, last_ckpt_s = step, elapsed
        final = save() if saved_step != step else latest_checkpoint(run_dir)
    finally:
        reporter.close()
    return {"final_checkpoint": str(final), "steps": step, "pairs_seen": pairs_seen, "tokens_seen": tokens_seen,
            "elapsed_s": elapsed, "final_loss": loss,
            "reward_margin": float(margin.mean()) if margin is not None else None, "skipped": skipped,
            "compile_s": compile_s, "micro_batch_size": micro, "attn_implementation": attn}


def _dpo_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, pairs: Sequence, reference: torch.Tensor,
              micro_batches: list[list[int]], cfg: DpoConfig, device: torch.device, dtype: torch.dtype,
              attn_implementation: str = "sdpa") -> tuple[float, torch.Tensor, float, int]:
    """One optimiser step: mean pair loss over all micro-batches; returns (loss, margins, grad norm, tokens).
    Tokens are the sequences' own tokens (padding not counted); one host sync, at the end."""
    n_pairs = sum(len(mb) for mb in micro_batches)
    total, margins, n_tokens = torch.zeros((), device=device), [], 0
    with weight_cast_scope(device, dtype):
        for mb in micro_batches:
            chosen = [pairs[i] for i in mb]
            n_tokens += sum(2 * len(p) + len(c) + len(r) for p, c, r in chosen)
            batch = {k: v.to(device, non_blocking=True) for k, v in collate_pairs(chosen, _pad_multiple(device)).items()}
            ref = torch.cat([reference[mb, 0], reference[mb, 1]]).to(device, non_blocking=True)
            with autocast_for(device, dtype):
                losses, margin = dpo_loss(sequence_logps(model, batch, attn_implementation), ref, cfg.beta)
            (losses.sum() / n_pairs).backward()
            total += losses.detach().sum()
            margins.append(margin)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    values = torch.cat([total.reshape(1), grad_norm.reshape(1).to(total.dtype), *margins]).cpu()  # the one sync
    return float(values[0]) / n_pairs, values[2:], float(values[1]), n_tokens
