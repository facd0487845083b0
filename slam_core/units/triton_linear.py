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

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per input dtype. fp32 runs without TF32 ("ieee": TF32's
# 10-bit mantissa would move near-ties); for 16-bit inputs the precision argument is Triton's default and moot.
_TILES = {
    torch.float16: (128, 128, 64, 8, 3),
    torch.bfloat16: (128, 128, 64, 8, 3),
    torch.float32: (64, 64, 32, 4, 3),
}
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
    if x.dtype not in _TILES or weight.dtype != x.dtype:
        raise ValueError(f"linear: dtypes {x.dtype} / {weight.dtype}; expected one of {list(_TILES)} for both")
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if m == 0:
        return y
    block_m, block_n, block_k, warps, stages = _TILES[x.dtype]
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _linear_kernel[grid](
        x, weight, bias if bias is not None else x, y, m, n, k,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=_GROUP_M,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=warps, num_stages=stages,
    )
    return y
