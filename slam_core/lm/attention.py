"""Packed (document-causal) attention for training on packed rows: no dense mask, no host sync.

A packed row holds several documents; each token may attend only to earlier tokens of its own segment
(`slam_core.lm.data`). HF's SDPA path derives that from `position_ids` by building a dense [B, 1, L, L]
mask, which takes SDPA off its flash kernel and repeats K/V for grouped-query attention. Here attention
is registered with transformers' `AttentionInterface` under names without "flash" and unknown to its mask
registry, so transformers builds no mask at all (transformers masking_utils `_preprocess_mask_arguments`),
and the kernel gets the segment boundaries instead:

- `packed_fa2`: flash-attn's `flash_attn_varlen_func` on the flattened (B*L, H, D) tokens (CUDA);
- `packed_varlen`: torch's `torch.nn.attention.varlen.varlen_attn` (FlashAttention-2 in ATen, CUDA);
- `packed_flex`: FlexAttention with a document-causal BlockMask built once per micro-batch (CUDA; on CPU
  torch has its forward only, enough for scoring);
- `packed_sdpa`: SDPA with a dense document-causal mask built once per micro-batch and native GQA (the CPU
  training path, and the reference the others are tested against).

The loader emits `cu_seqlens` (int32 segment starts over the flattened micro-batch, padded with B*L to a
bucketed length so compiled code sees few shapes) on its prefetch thread; the maximum segment length is
passed as the context length, a Python int, so nothing in the step reads a tensor back to the host.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from functools import lru_cache
from typing import Any

import torch

log = logging.getLogger(__name__)

PACKED_KERNELS = ("packed_fa2", "packed_varlen", "packed_flex", "packed_sdpa")
VARLEN_KERNELS = ("packed_fa2", "packed_varlen")  # take segment boundaries over the flattened micro-batch
# attention that sees a micro-batch as [1, B*L] at no extra cost: segment boundaries, block-sparse masks, HF's varlen
FLAT_OK = VARLEN_KERNELS + ("packed_flex", "flash_attention_2")


def needs_whole_rows(attn_implementation: str) -> bool:
    """Whether an implementation masks row by row with dense [L, L] masks (packed_sdpa, HF sdpa/eager): its
    micro-batches keep every example inside one row, since one [B*L, B*L] mask would cost B times the attention."""
    return attn_implementation not in FLAT_OK
# Buckets for the padded cu_seqlens length: micro_batch * per_row + 1 with per_row doubling from
# max(4, L // 128) (an average segment of >= 128 tokens fills the first bucket) up to the worst case.
_MIN_DOC_TOKENS = 3  # BOS, one unit, EOS


def cu_seqlens_length(n_segments: int, micro_batch_size: int, context_len: int) -> int:
    """Padded length of cu_seqlens for a micro-batch with `n_segments` segments (a few fixed buckets)."""
    per_row = max(4, context_len // 128)
    worst = context_len // _MIN_DOC_TOKENS + 2
    while micro_batch_size * per_row < n_segments and per_row < worst:
        per_row *= 2
    return micro_batch_size * max(per_row, -(-n_segments // micro_batch_size)) + 1


def cu_seqlens_from_positions(position_ids: torch.Tensor, micro_batch_size: int | None = None) -> torch.Tensor:
    """int32 segment starts of the flattened [B, L] micro-batch (a segment starts where position_ids is 0),
    closed by B*L and padded with B*L (empty segments) to a bucketed length."""
    rows, length = position_ids.shape
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten().to(torch.int32)
    size = cu_seqlens_length(len(starts), micro_batch_size or rows, length)
    out = torch.full((size,), rows * length, dtype=torch.int32)
    out[:len(starts)] = starts
    return out


def flash_attn_importable() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def torch_varlen_importable() -> bool:
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def available_kernels(device: torch.device) -> list[str]:
    """Packed kernels that can train on `device`, fastest first."""
    if device.type != "cuda":
        return ["packed_sdpa"]  # torch's flex has no CPU backward; its varlen_attn is CUDA-only
    out = ["packed_fa2"] if flash_attn_importable() else []
    if torch_varlen_importable():
        out.append("packed_varlen")
    return out + ["packed_flex", "packed_sdpa"]


def pick_packed_kernel(device: torch.device) -> str:
    return available_kernels(device)[0]


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on (q/k leave RoPE in fp32 under autocast; the kernels are not
    autocast-aware), else the input dtype."""
    kind = query.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else query.dtype


def _flatten(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """[B, H, L, D] q/k/v -> contiguous [B*L, H, D] in the compute dtype."""
    dtype = _compute_dtype(query)
    return tuple(t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3]).to(dtype).contiguous()
                 for t in (query, key, value))


def _boundaries(kwargs: dict[str, Any], query: torch.Tensor) -> tuple[torch.Tensor, int]:
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        raise ValueError("packed attention needs cu_seq_lens_q/max_length_q (see slam_core.lm.attention.packed_kwargs)")
    return cu, int(kwargs.get("max_length_q") or query.shape[2])


def fa2_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: Any, scaling: float | None = None, dropout: float = 0.0, **kwargs):
    from flash_attn import flash_attn_varlen_func

    batch, _, length, _ = query.shape
    cu, max_len = _boundaries(kwargs, query)
    q, k, v = _flatten(query, key, value)
    out = flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, dropout_p=dropout, softmax_scale=scaling,
                                 causal=True)
    return out.view(batch, length, *out.shape[1:]), None


_VARLEN_OPTIONS: dict[str, Any] = {}  # filled at registration, outside any traced code


def _torch_varlen_options() -> dict[str, Any]:
    """Keyword arguments for this torch's varlen_attn: its signature moved between releases (`is_causal=True`
    early on, `window_size=(-1, 0)` later; `enable_gqa` and `scale` are not in every release)."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    return {"causal": causal, "gqa": "enable_gqa" in params, "scale": "scale" in params}


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Any, scaling: float | None = None, dropout: float = 0.0, **kwargs):
    from torch.nn.attention.varlen import varlen_attn

    if dropout:
        raise ValueError("packed_varlen has no attention dropout (the speech LM trains with dropout 0)")
    batch, heads, length, _ = query.shape
    cu, max_len = _boundaries(kwargs, query)
    q, k, v = _flatten(query, key, value)
    options = _VARLEN_OPTIONS or _torch_varlen_options()
    extra = dict(options["causal"])
    if options["scale"]:
        extra["scale"] = scaling
    elif scaling is not None and abs(scaling - q.shape[-1] ** -0.5) > 1e-12:
        raise ValueError("this torch's varlen_attn has no scale argument; only the default 1/sqrt(head_dim) works")
    if k.shape[1] != heads:
        if options["gqa"]:
            extra["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
    out = varlen_attn(q, k, v, cu, cu, max_len, max_len, **extra)
    return out.view(batch, length, *out.shape[1:]), None


def _segments(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] segment index of every token within its row (a segment starts where position_ids is 0)."""
    return torch.cumsum(position_ids == 0, dim=1)


def document_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Dense [B, 1, L, L] boolean document-causal mask (True = may attend)."""
    segment = _segments(position_ids)
    length = position_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    return ((segment[:, :, None] == segment[:, None, :]) & causal)[:, None]


def sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: Any, scaling: float | None = None, dropout: float = 0.0, **kwargs):
    mask = kwargs.get("packed_document_mask")
    if mask is None:
        raise ValueError("packed_sdpa needs packed_document_mask (see slam_core.lm.attention.packed_kwargs)")
    dtype = _compute_dtype(query)
    q, k, v = (t.to(dtype) for t in (query, key, value))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                                           enable_gqa=k.shape[1] != q.shape[1])
    return out.transpose(1, 2).contiguous(), None


def document_block_mask(position_ids: torch.Tensor):
    """FlexAttention BlockMask: token q sees token k of the same row iff k <= q and no segment starts in
    (k, q]. Built from position_ids on their device (no host sync); once per micro-batch."""
    from torch.nn.attention.flex_attention import create_block_mask

    segment = _segments(position_ids)

    def document_causal(b, h, q_idx, kv_idx):
        return (segment[b, q_idx] == segment[b, kv_idx]) & (kv_idx <= q_idx)

    rows, length = position_ids.shape
    return create_block_mask(document_causal, rows, None, length, length, device=position_ids.device)


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: Any, scaling: float | None = None, dropout: float = 0.0, **kwargs):
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = kwargs.get("packed_block_mask")
    if block_mask is None:
        raise ValueError("packed_flex needs packed_block_mask (see slam_core.lm.attention.packed_kwargs)")
    if dropout:
        raise ValueError("packed_flex has no attention dropout (the speech LM trains with dropout 0)")
    dtype = _compute_dtype(query)
    q, k, v = (t.to(dtype) for t in (query, key, value))
    # on CUDA flex is only fast compiled; inside a compiled region it is traced as is
    compiled = query.is_cuda and not torch.compiler.is_compiling()
    attend = _compiled_flex() if compiled else flex_attention
    out = attend(q, k, v, block_mask=block_mask, scale=scaling, enable_gqa=k.shape[1] != q.shape[1])
    return out.transpose(1, 2).contiguous(), None


_FORWARDS = {"packed_fa2": fa2_attention, "packed_varlen": varlen_attention, "packed_flex": flex_attention_forward,
             "packed_sdpa": sdpa_attention}


def register_packed_attention() -> None:
    """Make the packed kernels valid `attn_implementation` names (idempotent)."""
    from transformers import AttentionInterface

    for name, forward in _FORWARDS.items():
        AttentionInterface.register(name, forward)
    if torch_varlen_importable() and not _VARLEN_OPTIONS:
        _VARLEN_OPTIONS.update(_torch_varlen_options())


def is_packed(attn_implementation: str) -> bool:
    return attn_implementation in PACKED_KERNELS


def packed_kwargs(attn_implementation: str, batch: dict[str, torch.Tensor], context_len: int) -> dict[str, Any]:
    """Model-forward keyword arguments that carry the segment boundaries of a micro-batch to the kernel."""
    if attn_implementation == "packed_flex":
        return {"packed_block_mask": document_block_mask(batch["position_ids"])}
    if attn_implementation == "packed_sdpa":
        return {"packed_document_mask": document_mask(batch["position_ids"])}
    if attn_implementation in ("packed_fa2", "packed_varlen"):
        cu = batch["cu_seqlens"]
        return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": context_len, "max_length_k": context_len}
    return {}
