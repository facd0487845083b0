"""A matmul whose every output row is computed the same way whatever the number of rows (Triton, CUDA).

cuBLAS picks its kernel (tile shape, split-K, stream-K) from the problem shape, so one frame's features
change in the last bits with the number of frames it is batched with, and near-ties of the k-means argmin
flip. This kernel has one fixed tiling per dtype: each (BLOCK_M x BLOCK_N) output tile is computed by one
program that walks K in BLOCK_K steps from 0 upwards with an fp32 accumulator, with no split of K between
programs. A row's result therefore depends only on that row and the weights: not on M, on the row's
position, or on the other rows (the usual design of batch-invariant inference kernels; see README "Units").

`M` is not specialised (Triton would otherwise compile variants by M's divisibility); N and K are
compile-time constants (the layer shapes). The kernel also runs
under `TRITON_INTERPRET=1` on CPU tensors, which is how its arithmetic is tested without a GPU.
"""

from __future__ import annotations

import torch

import triton
import triton.language as tl

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per input dtype; for 16-bit inputs the precision argument is
# Triton's default and moot. fp32 never runs plain TF32 (its 10-bit mantissa would move near-ties): "tf32x3"
# (three TF32 tensor-core products per step, error of the order of fp32 rounding; the speed that makes fp32,
# the presets' default dtype, usable at full batch speed) or "ieee" (exact fp32 products on the CUDA cores,
# several times slower; used where tf32x3 fails to compile).
_TILES = {
    torch.float16: (128, 128, 64, 8, 3),
    torch.bfloat16: (128, 128, 64, 8, 3),
}
_FP32_TILES = {"tf32x3": (128, 128, 32, 8, 3), "ieee": (64, 64, 32, 4, 3)}
FP32_PRECISIONS = tuple(_FP32_TILES)
_fp32 = {"precision": "tf32x3"}


def fp32_precision() -> str:
    """The precision fp32 inputs run at now ("tf32x3", or "ieee" after a failed tf32x3 compile or a request)."""
    return _fp32["precision"]


def set_fp32_precision(precision: str) -> None:
    if precision not in _FP32_TILES:
        raise ValueError(f"fp32 precision {precision!r}: expected one of {FP32_PRECISIONS}")
    _fp32["precision"] = precision
_GROUP_M = 8  # programs walk tiles in groups of 8 row-blocks for L2 reuse; it only changes who computes a tile


@triton.jit(do_not_specialize=["M"])
def _linear_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N: tl.constexpr, K: tl.constexpr,
                   stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
                   HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   GROUP_M: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    blocks_m = tl.cdiv(M, BLOCK_M)
    blocks_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * blocks_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk
    w_ptrs = w_ptr + cols[None, :] * stride_wn + ks[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_left = K - k0
        a = tl.load(x_ptrs, mask=(rows[:, None] < M) & (ks[None, :] < k_left), other=0.0)
        b = tl.load(w_ptrs, mask=(cols[None, :] < N) & (ks[:, None] < k_left), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + rows[:, None] * stride_ym + cols[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < N))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ weight.T + bias` for x (M, K) and an nn.Linear weight (N, K), in x's dtype, row-invariant."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"linear: x {tuple(x.shape)} and weight {tuple(weight.shape)} do not fit (M, K) x (N, K)")
    if x.dtype not in (*_TILES, torch.float32) or weight.dtype != x.dtype:
        raise ValueError(f"linear: dtypes {x.dtype} / {weight.dtype}; expected one of {[*_TILES, torch.float32]} for both")
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if m == 0:
        return y
    if x.dtype != torch.float32:
        _launch(x, weight, bias, y, _TILES[x.dtype], "tf32")
        return y
    if "probed" not in _fp32:
        _probe_fp32(x.device)
    _launch(x, weight, bias, y, _FP32_TILES[_fp32["precision"]], _fp32["precision"])
    return y


def _probe_fp32(device: torch.device) -> None:
    """Once, before any fp32 result is produced: can this Triton/GPU compile tf32x3 dots? If not, every fp32
    call runs ieee (so one process never mixes the two)."""
    _fp32["probed"] = True
    if _fp32["precision"] == "ieee":
        return
    x, w = torch.ones(8, 8, device=device), torch.ones(8, 8, device=device)
    try:
        _launch(x, w, None, torch.empty(8, 8, device=device), _FP32_TILES[_fp32["precision"]], _fp32["precision"])
    except Exception as err:  # noqa: BLE001 - any compile or launch failure of the fast form
        import logging

        logging.getLogger(__name__).warning("triton linear: fp32 %s unavailable (%s); using ieee", _fp32["precision"], err)
        _fp32["precision"] = "ieee"


def _launch(x, weight, bias, y, tiles, precision: str) -> None:
    (m, k), n = x.shape, weight.shape[0]
    block_m, block_n, block_k, warps, stages = tiles
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _linear_kernel[grid](
        x, weight, bias if bias is not None else x, y, m, n, k,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=_GROUP_M,
        PRECISION=precision, num_warps=warps, num_stages=stages,
    )
