"""Packed attention kernels: a packed forward (and backward) equals each document run alone, for every kernel
this machine has (CPU: packed_sdpa, and packed_flex's forward; CUDA: flash-attn, torch varlen, flex, compiled)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from slam_core.lm.attention import (
    available_kernels, cu_seqlens_from_positions, cu_seqlens_length, packed_kwargs, register_packed_attention,
)
from slam_core.lm.data import IGNORE_INDEX
from slam_core.lm.step import autocast_for, packed_loss_sum

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]


def _model(device: torch.device, dtype=torch.float32) -> Qwen2ForCausalLM:
    register_packed_attention()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=502, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_cache=False, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config).to(device=device, dtype=dtype)


def _packed_batch(lengths_per_row: list[list[int]], length: int, seed: int = 0) -> tuple[dict, list[torch.Tensor]]:
    """Rows of documents (the last one of a row may be cut, as the loader does); returns the batch and the
    documents as they appear (each one a segment)."""
    gen = torch.Generator().manual_seed(seed)
    ids, pos, docs = [], [], []
    for lengths in lengths_per_row:
        assert sum(lengths) == length
        row = [torch.randint(2, 502, (n,), generator=gen) for n in lengths]
        docs += row
        ids.append(torch.cat(row))
        pos.append(torch.cat([torch.arange(n) for n in lengths]))
    ids, pos = torch.stack(ids), torch.stack(pos)
    labels = ids.clone()
    labels[pos == 0] = IGNORE_INDEX
    return {"input_ids": ids, "position_ids": pos, "labels": labels, "cu_seqlens": cu_seqlens_from_positions(pos)}, docs


ROWS = [[50, 30, 1, 47], [128], [3, 100, 25]]


def _alone(model: Qwen2ForCausalLM, docs: list[torch.Tensor], device: torch.device, dtype: torch.dtype):
    """Logits of each document run alone with plain causal SDPA, and the summed next-token loss."""
    model.set_attn_implementation("sdpa")
    logits, loss_sum = [], 0.0
    for doc in docs:
        with autocast_for(device, dtype):
            out = model(input_ids=doc[None].to(device), use_cache=False).logits[0].float()
        logits.append(out)
        if len(doc) > 1:
            loss_sum = loss_sum + F.cross_entropy(out[:-1], doc[1:].to(device), reduction="sum")
    return torch.cat(logits), loss_sum


def _check_kernel(kernel: str, device: torch.device, dtype: torch.dtype, tol: float, backward: bool = True,
                  compile_layers: bool = False) -> None:
    model = _model(device)
    batch, docs = _packed_batch(ROWS, 128)
    batch = {k: v.to(device) for k, v in batch.items()}
    ref_logits, ref_loss = _alone(model, docs, device, dtype)
    if backward:
        ref_loss.backward()
        ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
    model.set_attn_implementation(kernel)
    if compile_layers:
        for layer in model.model.layers:
            layer.compile(dynamic=False)
    with torch.set_grad_enabled(backward), autocast_for(device, dtype):
        kwargs = packed_kwargs(kernel, batch, 128)
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                       **kwargs).logits.float()
        loss_sum, n_targets = packed_loss_sum(model, batch, kernel)
    assert (logits.reshape(-1, 502) - ref_logits).abs().max() < tol
    assert int(n_targets) == sum(len(d) - 1 for d in docs)
    assert abs(float(loss_sum) - float(ref_loss)) / int(n_targets) < tol
    if backward:
        loss_sum.backward()
        for name, param in model.named_parameters():
            scale = ref_grads[name].abs().max().clamp(min=1e-3)
            assert (param.grad - ref_grads[name]).abs().max() / scale < 10 * tol, name


def test_cu_seqlens_marks_every_segment_and_pads_to_a_bucket():
    batch, docs = _packed_batch(ROWS, 128)
    cu = batch["cu_seqlens"]
    starts = [0, 50, 80, 81, 128, 256, 259, 359]
    assert cu.dtype == torch.int32 and cu[:len(starts)].tolist() == starts
    assert (cu[len(starts):] == 3 * 128).all() and len(cu) == cu_seqlens_length(len(starts), 3, 128)
    assert cu_seqlens_length(8, 3, 128) == cu_seqlens_length(12, 3, 128) == 3 * 4 + 1  # one shape for typical rows
    assert cu_seqlens_length(13, 3, 128) == 3 * 8 + 1  # the next bucket
    assert cu_seqlens_length(3 * 45, 3, 128) >= 3 * 45 + 1  # the worst case (3-token documents) still fits


def test_packed_sdpa_forward_and_backward_equal_documents_alone():
    _check_kernel("packed_sdpa", torch.device("cpu"), torch.float32, 1e-4)


def test_packed_flex_forward_equals_documents_alone_on_cpu():
    """torch has no CPU backward for FlexAttention; its forward (scoring) still runs here."""
    _check_kernel("packed_flex", torch.device("cpu"), torch.float32, 1e-4, backward=False)


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, causal_flag, scale=None, gqa_ok=False):
    """A plain-torch stand-in for a varlen kernel on (T, H, D): causal SDPA per segment."""
    assert causal_flag and q.dtype == k.dtype == v.dtype and cu_q.dtype == torch.int32 and isinstance(max_q, int)
    assert k.shape[1] == q.shape[1] or gqa_ok
    out = torch.zeros_like(q)
    bounds = cu_q.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            seg = [t[a:b].transpose(0, 1)[None] for t in (q, k, v)]
            out[a:b] = F.scaled_dot_product_attention(*seg, is_causal=True, scale=scale,
                                                      enable_gqa=True)[0].transpose(0, 1)
    return out


def test_varlen_wrappers_pass_the_right_layout_and_arguments(monkeypatch):
    """The CUDA kernels' wrappers (flattening, causal flag, GQA, boundaries), checked on CPU against stand-ins
    with the kernels' signatures: flash-attn's, and torch varlen_attn's of both the is_causal and the
    window_size generations."""
    import sys
    import types

    import torch.nn.attention.varlen as varlen_mod

    from slam_core.lm import attention

    fake_fa = types.ModuleType("flash_attn")
    fake_fa.flash_attn_varlen_func = lambda q, k, v, cu_q, cu_k, mq, mk, dropout_p=0.0, softmax_scale=None, causal=False: (
        _reference_varlen(q, k, v, cu_q, cu_k, mq, mk, causal_flag=causal, scale=softmax_scale, gqa_ok=True))
    monkeypatch.setitem(sys.modules, "flash_attn", fake_fa)
    _check_kernel("packed_fa2", torch.device("cpu"), torch.float32, 1e-4)

    def new_style(q, k, v, cu_q, cu_k, mq, mk, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        return _reference_varlen(q, k, v, cu_q, cu_k, mq, mk, causal_flag=tuple(window_size) == (-1, 0), scale=scale,
                                 gqa_ok=enable_gqa)

    def old_style(q, k, v, cu_q, cu_k, mq, mk, is_causal=False):
        return _reference_varlen(q, k, v, cu_q, cu_k, mq, mk, causal_flag=is_causal)

    for fake in (new_style, old_style):
        monkeypatch.setattr(varlen_mod, "varlen_attn", fake)
        monkeypatch.setattr(attention, "_VARLEN_OPTIONS", attention._torch_varlen_options())
        _check_kernel("packed_varlen", torch.device("cpu"), torch.float32, 1e-4)


def test_cpu_trains_with_packed_sdpa():
    assert available_kernels(torch.device("cpu")) == ["packed_sdpa"]


@pytest.mark.parametrize("kernel", ["packed_fa2", "packed_varlen", "packed_flex", "packed_sdpa"])
@pytest.mark.parametrize("compile_layers", [False, True])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_kernels_equal_documents_alone(kernel, compile_layers):
    device = torch.device("cuda")
    if kernel not in available_kernels(device):
        pytest.skip(f"{kernel} is not available here")
    _check_kernel(kernel, device, torch.bfloat16, 5e-2, compile_layers=compile_layers)
