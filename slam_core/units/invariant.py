"""HuBERT's transformer over a batch of utterances, each utterance's output independent of the batch.

A padded (B, T_max, D) batch makes every kernel's shape depend on the batch: cuBLAS and cuDNN pick
kernels (tiling, split-K) per shape, FlashAttention splits the keys by batch x heads, and so an
utterance's features move in the last bits with its neighbours and near-ties of the k-means argmin
flip. Here the utterances' frames are concatenated into one (rows, D) matrix, so:

- every row-wise step (linear layers, layer norms, GELU, residuals) computes a row from that row alone,
  with a matmul whose per-row arithmetic does not depend on the number of rows: on CUDA the fixed-tile
  Triton kernel of `triton_linear` over all rows at once; elsewhere (CPU, or CUDA without Triton)
  torch's own ops on fixed-size blocks of `block_rows` rows (the last block zero-padded), so every call
  has the same shape and hence the same kernel;
- attention and the positional convolution run per utterance on exactly its own frames (one
  `scaled_dot_product_attention` / `conv1d` call per utterance, whose shape depends on that utterance only).

The conv feature encoder before this runs per utterance as well (see extract.py), so a segment's units
are the same bits whether it is extracted alone, in any batch, at any position (tested on CPU; on CUDA by
a `gpu` test and by the GPU bench).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from transformers import HubertModel

CPU_BLOCK_ROWS = 256
CUDA_BLOCK_ROWS = 4096
MATMUL_BACKENDS = ("auto", "triton", "blocks")


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


class InvariantTransformer:
    """`hidden_states[layer]` of a HubertModel from conv features, utterance by utterance in effect.

    Call with a list of (T_i, C) conv-encoder outputs; returns one (T_i, D) tensor per utterance.
    """

    def __init__(self, model: HubertModel, layer: int, matmul: str = "auto", block_rows: int | None = None) -> None:
        cfg = model.config
        if getattr(cfg, "adapter_attn_dim", None) is not None:
            raise ValueError("HuBERT attention adapters are not supported by the batch-invariant path")
        self.model, self.layer = model, layer
        device = next(model.parameters()).device
        self.matmul = resolve_matmul(matmul, device)
        if block_rows is None:
            block_rows = CUDA_BLOCK_ROWS if device.type == "cuda" else CPU_BLOCK_ROWS
        # Triton's tiling is fixed whatever the row count, so it takes all rows in one call.
        self.block_rows = None if self.matmul == "triton" else int(block_rows)
        self.stable = bool(cfg.do_stable_layer_norm)
        self.n_heads = cfg.num_attention_heads
        with torch.no_grad():  # q, k and v as one (3D, D) weight: one matmul instead of three
            self.qkv = [(torch.cat([l.attention.q_proj.weight, l.attention.k_proj.weight, l.attention.v_proj.weight]),
                         torch.cat([l.attention.q_proj.bias, l.attention.k_proj.bias, l.attention.v_proj.bias]))
                        for l in model.encoder.layers[:layer]]
            pos = model.encoder.pos_conv_embed
            # weight-normed conv: materialise the weight once, not once per utterance
            self.pos_weight, self.pos_bias = pos.conv.weight.detach().clone(), pos.conv.bias
        self._linear: Callable = _triton_linear() if self.matmul == "triton" else F.linear

    # ---- row-wise steps -----------------------------------------------------------------------

    def _rowwise(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """fn over the rows of x: in one call (triton), or block by block so every call has one shape."""
        if self.block_rows is None:
            return fn(x)
        return torch.cat([fn(block) for block in x.split(self.block_rows)])

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

    def _attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """Bidirectional attention of one utterance from its (T, 3D) projections; (T, D) out."""
        t, three_d = qkv.shape
        q, k, v = qkv.view(t, 3, self.n_heads, three_d // (3 * self.n_heads)).permute(1, 2, 0, 3)
        return F.scaled_dot_product_attention(q[None], k[None], v[None])[0].transpose(0, 1).reshape(t, -1)

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
        x = x + self._per_item(self._positional, x, spans, width)  # additions round the same in any layout
        if not self.stable:  # post-LN (HuBERT base) normalises before the layers
            x = self._rowwise(lambda rows: self._layer_norm(rows, encoder.layer_norm), x)
        for layer, (w_qkv, b_qkv) in zip(encoder.layers[: self.layer], self.qkv):
            pre = (lambda rows, n=layer.layer_norm: self._layer_norm(rows, n)) if self.stable else (lambda rows: rows)
            qkv = self._rowwise(lambda rows: self._linear(pre(rows), w_qkv, b_qkv), x)
            context = self._per_item(self._attention, qkv, spans, width)
            x = self._rowwise_pair(partial(self._after_attention, layer), context, x)
        return [x[lo:hi] for lo, hi in spans]

    def _after_attention(self, layer, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Output projection, residuals, feed-forward and layer norms of one encoder layer (row-wise)."""
        out_proj = layer.attention.out_proj
        h = residual + self._linear(context, out_proj.weight, out_proj.bias)
        if self.stable:
            return h + self._feed_forward(self._layer_norm(h, layer.final_layer_norm), layer.feed_forward)
        h = self._layer_norm(h, layer.layer_norm)
        return self._layer_norm(h + self._feed_forward(h, layer.feed_forward), layer.final_layer_norm)

    def _rowwise_pair(self, fn, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.block_rows is None:
            return fn(a, b)
        return torch.cat([fn(x, y) for x, y in zip(a.split(self.block_rows), b.split(self.block_rows))])


def _triton_linear() -> Callable:
    from slam_core.units.triton_linear import linear

    return linear
