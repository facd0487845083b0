"""HuBERT's transformer over a batch of utterances, each utterance's output independent of the batch.

A padded (B, T_max, D) batch makes every kernel's shape depend on the batch: cuBLAS and cuDNN pick
kernels (tiling, split-K) per shape, FlashAttention splits the keys by batch x heads, and so an
utterance's features move in the last bits with its neighbours and near-ties of the k-means argmin
flip. Here the utterances' frames are concatenated into one (rows, D) matrix, and every step is one of:

- row-wise (linear layers, layer norms, GELU, residuals; `RowOps`): a row is computed from that row alone,
  with a matmul whose per-row arithmetic does not depend on the number of rows: on CUDA the fixed-tile
  Triton kernel of `triton_linear` (any number of rows per call); elsewhere (CPU, or CUDA without Triton)
  torch's own ops on fixed-size blocks of `block_rows` rows (the last block zero-padded), so every call
  has the same shape and hence the same kernel;
- the positional convolution as a gather of each row's own utterance's window (zeros past its edges)
  followed by a row-wise matmul per conv group (kernels="rows"), so it is row-wise too;
- attention on exactly each utterance's own frames: one varlen FlashAttention call over all utterances
  on CUDA in fp16/bf16 (each sequence is tiled from its own start, with no split of the keys), else one
  `scaled_dot_product_attention` per utterance (whose shape depends on that utterance only).

kernels="per_item" is the previous implementation (positional conv and attention per utterance, one call
each), kept as the bench's same-process baseline. The conv feature encoder before this is `frontend.py`
(row-wise as well), so a segment's units are the same bits whether it is extracted alone, in any batch,
at any position (tested on CPU; on CUDA by a `gpu` test and by the GPU bench).
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from transformers import HubertModel

CPU_BLOCK_ROWS = 256
CUDA_BLOCK_ROWS = 4096
CHUNK_ROWS = 32_768  # Triton path: rows per call, for memory only (its per-row arithmetic ignores the count)
MATMUL_BACKENDS = ("auto", "triton", "blocks")
KERNELS = ("rows", "per_item")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_matmul(requested: str, device: torch.device) -> str:
    """'triton' (fixed-tile kernel, CUDA only) or 'blocks' (fixed-shape blocks of torch ops); 'auto' picks
    triton on CUDA when it is importable."""
    if requested not in MATMUL_BACKENDS:
        raise ValueError(f"units.invariant_matmul={requested!r}: expected one of {MATMUL_BACKENDS}")
    if requested == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "blocks"
    if requested == "triton" and not (device.type == "cuda" and triton_available()):
        raise ValueError("units.invariant_matmul=triton needs a CUDA device and the triton package "
                         "(use 'blocks' or 'auto' elsewhere)")
    return requested


class RowOps:
    """Row-invariant building blocks: a linear layer and `rowwise(fn, *xs)`, which applies a row-wise `fn` so
    that each output row is the same bits whatever the number and content of the other rows."""

    def __init__(self, device: torch.device, matmul: str = "auto", block_rows: int | None = None) -> None:
        self.matmul = resolve_matmul(matmul, device)
        if block_rows is None:
            block_rows = CUDA_BLOCK_ROWS if device.type == "cuda" else CPU_BLOCK_ROWS
        # Triton's tiling is fixed whatever the row count, so it takes any number of rows per call.
        self.block_rows = None if self.matmul == "triton" else int(block_rows)
        self.linear: Callable = _triton_linear() if self.matmul == "triton" else F.linear

    def rowwise(self, fn: Callable[..., torch.Tensor], *xs: torch.Tensor) -> torch.Tensor:
        """fn over corresponding rows of xs: Triton in chunks of any size; torch ops on whole blocks of
        `block_rows` rows (the last one zero-padded, then trimmed), so every call has one shape."""
        n = xs[0].shape[0]
        if self.block_rows is None and n <= CHUNK_ROWS:
            return fn(*xs)
        size = CHUNK_ROWS if self.block_rows is None else self.block_rows
        out = None
        for lo in range(0, n, size):
            part = [x[lo:lo + size] for x in xs]
            if self.block_rows is not None and part[0].shape[0] < size:  # the last block, zero-padded
                part = [torch.cat([x, x.new_zeros(size - x.shape[0], *x.shape[1:])]) for x in part]
            y = fn(*part)
            if out is None:
                out = y.new_empty(n, *y.shape[1:])
            out[lo:lo + size] = y[:min(size, n - lo)]
        return out


def all_windows(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """A view of (rows, C) x, made contiguous, as (rows - kernel + 1, kernel * C): row p is x[p : p + kernel]
    flattened (kernel-major), so gathering the rows of some window starts copies whole contiguous windows."""
    x = x.contiguous()
    return x.as_strided((x.shape[0] - kernel + 1, kernel * x.shape[1]), (x.shape[1], 1))


def varlen_attention() -> Callable | None:
    """torch's varlen FlashAttention (torch.nn.attention.varlen), called without a split of the keys, or None
    where this torch has none. Its signature moved between releases (is_causal, then window_size; num_splits)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    extra = {"is_causal": False} if "is_causal" in params else {}
    if "num_splits" in params:
        extra["num_splits"] = 1
    return partial(varlen_attn, **extra)


class InvariantTransformer:
    """`hidden_states[layer]` of a HubertModel from conv features, utterance by utterance in effect.

    Call with a list of (T_i, C) conv-encoder outputs; returns one (T_i, D) tensor per utterance.
    `attention`: "auto" (varlen FlashAttention on CUDA in fp16/bf16 when torch has it, else per utterance),
    "varlen" or "per_item".
    """

    def __init__(self, model: HubertModel, layer: int, matmul: str = "auto", block_rows: int | None = None,
                 kernels: str = "rows", attention: str = "auto") -> None:
        cfg = model.config
        if getattr(cfg, "adapter_attn_dim", None) is not None:
            raise ValueError("HuBERT attention adapters are not supported by the batch-invariant path")
        if kernels not in KERNELS:
            raise ValueError(f"kernels={kernels!r}: expected one of {KERNELS}")
        if model.encoder.pos_conv_embed.batch_norm is not None:
            raise ValueError("a positional conv with batch norm is not supported by the batch-invariant path")
        self.model, self.layer, self.kernels = model, layer, kernels
        param = next(model.parameters())
        self.rows = RowOps(param.device, matmul, block_rows)
        self.matmul, self.block_rows, self._linear = self.rows.matmul, self.rows.block_rows, self.rows.linear
        self.attention = self._resolve_attention(attention if kernels == "rows" else "per_item", param)
        self.stable = bool(cfg.do_stable_layer_norm)
        self.n_heads = cfg.num_attention_heads
        with torch.no_grad():  # q, k and v as one (3D, D) weight: one matmul instead of three
            self.qkv = [(torch.cat([l.attention.q_proj.weight, l.attention.k_proj.weight, l.attention.v_proj.weight]),
                         torch.cat([l.attention.q_proj.bias, l.attention.k_proj.bias, l.attention.v_proj.bias]))
                        for l in model.encoder.layers[:layer]]
            pos = model.encoder.pos_conv_embed
            # weight-normed conv: materialise the weight once, not once per utterance
            self.pos_weight, self.pos_bias = pos.conv.weight.detach().clone(), pos.conv.bias
            # per group, (out, kernel * in) for the gathered windows (kernel-major, channel-minor)
            groups = pos.conv.groups
            self.pos_group_weights = [w.permute(0, 2, 1).reshape(w.shape[0], -1).contiguous()
                                      for w in self.pos_weight.chunk(groups)]
            self.pos_group_biases = list(self.pos_bias.detach().chunk(groups))

    @staticmethod
    def _resolve_attention(requested: str, param: torch.Tensor) -> str:
        if requested not in ("auto", "varlen", "per_item"):
            raise ValueError(f"attention={requested!r}: expected auto, varlen or per_item")
        usable = param.is_cuda and param.dtype in (torch.float16, torch.bfloat16) and varlen_attention() is not None
        if requested == "varlen" and not usable:
            raise ValueError("varlen attention needs CUDA, fp16/bf16 and torch.nn.attention.varlen")
        return "varlen" if requested == "auto" and usable else ("per_item" if requested == "auto" else requested)

    # ---- row-wise steps -----------------------------------------------------------------------

    def _rowwise(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return self.rows.rowwise(fn, x)

    def _layer_norm(self, x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def _feed_forward(self, x: torch.Tensor, ff) -> torch.Tensor:
        h = ff.intermediate_act_fn(self._linear(x, ff.intermediate_dense.weight, ff.intermediate_dense.bias))
        return self._linear(h, ff.output_dense.weight, ff.output_dense.bias)

    # ---- per-utterance steps ------------------------------------------------------------------

    @staticmethod
    def _per_item(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, spans: Sequence[tuple[int, int]],
                  out_cols: int) -> torch.Tensor:
        """fn on each utterance's own rows of x; rows outside every span (block padding) stay zero."""
        out = x.new_zeros(x.shape[0], out_cols)
        for lo, hi in spans:
            out[lo:hi] = fn(x[lo:hi])
        return out

    def _positional(self, item: torch.Tensor) -> torch.Tensor:
        """HubertPositionalConvEmbedding on one utterance (T, D)."""
        conv = self.model.encoder.pos_conv_embed
        y = F.conv1d(item.T[None], self.pos_weight, self.pos_bias, padding=conv.conv.padding, groups=conv.conv.groups)
        return conv.activation(conv.padding(y))[0].T

    def _positional_rows(self, x: torch.Tensor, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
        """HubertPositionalConvEmbedding on every utterance at once, row-wise: the utterances are laid out with
        kernel // 2 zero rows before each and after the last (the conv's own zero padding, never a neighbour's
        frame), each output row gathers its window from there, then one row-wise matmul per conv group. Rows
        outside every span stay zero."""
        pos = self.model.encoder.pos_conv_embed
        kernel, n = pos.conv.kernel_size[0], spans[-1][1]
        half, width = kernel // 2, x.shape[1] // len(self.pos_group_weights)
        gap = x.new_zeros(half, x.shape[1])
        buffer = torch.cat([piece for lo, hi in spans for piece in (gap, x[lo:hi])] + [gap])
        lengths = torch.tensor([hi - lo for lo, hi in spans], device=x.device)
        item = torch.repeat_interleave(torch.arange(len(spans), device=x.device), lengths, output_size=n)
        first = torch.arange(n, device=x.device) + half * item  # row r of utterance i sits at r + half * (i + 1)
        out = x.new_zeros(x.shape)
        for g, (w, b) in enumerate(zip(self.pos_group_weights, self.pos_group_biases)):
            windows = all_windows(buffer[:, g * width:(g + 1) * width], kernel)
            out[:n, g * width:(g + 1) * width] = self.rows.rowwise(
                lambda rows, windows=windows, w=w, b=b: self._linear(windows[rows], w, b), first)
        out[:n] = self.rows.rowwise(pos.activation, out[:n])
        return out

    def _attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """Bidirectional attention of one utterance from its (T, 3D) projections; (T, D) out."""
        t, three_d = qkv.shape
        q, k, v = qkv.view(t, 3, self.n_heads, three_d // (3 * self.n_heads)).permute(1, 2, 0, 3)
        return F.scaled_dot_product_attention(q[None], k[None], v[None])[0].transpose(0, 1).reshape(t, -1)

    def _attention_varlen(self, qkv: torch.Tensor, spans: Sequence[tuple[int, int]], cu: torch.Tensor,
                          max_len: int) -> torch.Tensor:
        """Every utterance's attention in one varlen FlashAttention call over its own frames only."""
        n, three_d = spans[-1][1], qkv.shape[1]
        q, k, v = (t.contiguous() for t in qkv[:n].view(n, 3, self.n_heads, three_d // (3 * self.n_heads)).unbind(1))
        out = qkv.new_zeros(qkv.shape[0], three_d // 3)
        out[:n] = varlen_attention()(q, k, v, cu, cu, max_len, max_len).reshape(n, -1)
        return out

    # ---- the stack ----------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, conv_features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        spans, lo = [], 0
        for f in conv_features:
            spans.append((lo, lo + int(f.shape[0])))
            lo += int(f.shape[0])
        x = torch.cat(list(conv_features))
        if self.block_rows is not None and x.shape[0] % self.block_rows:
            x = F.pad(x, (0, 0, 0, self.block_rows - x.shape[0] % self.block_rows))  # whole blocks only
        encoder, proj, width = self.model.encoder, self.model.feature_projection, self.model.config.hidden_size

        def project(rows: torch.Tensor) -> torch.Tensor:
            if proj.feat_proj_layer_norm:
                rows = self._layer_norm(rows, proj.layer_norm)
            return self._linear(rows, proj.projection.weight, proj.projection.bias)

        x = self._rowwise(project, x)
        if self.kernels == "rows":
            x = x + self._positional_rows(x, spans)  # additions round the same in any layout
        else:
            x = x + self._per_item(self._positional, x, spans, width)
        if not self.stable:  # post-LN (HuBERT base) normalises before the layers
            x = self._rowwise(lambda rows: self._layer_norm(rows, encoder.layer_norm), x)
        if self.attention == "varlen":
            cu = torch.tensor([0] + [hi for _, hi in spans], dtype=torch.int32, device=x.device)
            max_len = max(hi - lo for lo, hi in spans)
            attend = lambda qkv: self._attention_varlen(qkv, spans, cu, max_len)  # noqa: E731
        else:
            attend = lambda qkv: self._per_item(self._attention, qkv, spans, width)  # noqa: E731
        for layer, (w_qkv, b_qkv) in zip(encoder.layers[: self.layer], self.qkv):
            pre = (lambda rows, n=layer.layer_norm: self._layer_norm(rows, n)) if self.stable else (lambda rows: rows)
            qkv = self._rowwise(lambda rows: self._linear(pre(rows), w_qkv, b_qkv), x)
            x = self.rows.rowwise(partial(self._after_attention, layer), attend(qkv), x)
        return [x[lo:hi] for lo, hi in spans]

    def _after_attention(self, layer, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Output projection, residuals, feed-forward and layer norms of one encoder layer (row-wise)."""
        out_proj = layer.attention.out_proj
        h = residual + self._linear(context, out_proj.weight, out_proj.bias)
        if self.stable:
            return h + self._feed_forward(self._layer_norm(h, layer.final_layer_norm), layer.feed_forward)
        h = self._layer_norm(h, layer.layer_norm)
        return self._layer_norm(h + self._feed_forward(h, layer.feed_forward), layer.final_layer_norm)


def _triton_linear() -> Callable:
    from slam_core.units.triton_linear import linear

    return linear
