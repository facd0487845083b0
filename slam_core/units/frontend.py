"""HuBERT's conv feature encoder over many utterances at once, each utterance's frames the same bits alone.

Every conv layer is a gather of each output frame's own input window (im2col on the channels-last frames of
all utterances, concatenated without padding) followed by one row-wise matmul (`RowOps` of invariant.py:
fixed-tile Triton on CUDA, fixed-shape blocks elsewhere), so a frame is computed from its own window and
the weights alone, whatever the other utterances, their number or the position in the batch. No padding
enters anywhere, so nothing needs masking; and no per-shape kernel choice (cuDNN picks algorithms per
input shape) is left. The one statistic that spans frames, HuBERT-base's GroupNorm over time in conv
layer 0 ("group" norm), is computed per utterance on exactly its own frames, in float32.

This replaces running `HubertFeatureEncoder` once per utterance (one cuDNN call per layer per utterance,
each with its own shape), which is kept in extract.py for padded batching and as the bench's baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import HubertModel

from slam_core.units.invariant import RowOps, all_windows

# Utterances per group are limited so the first layer's output (rows x 512 channels) stays a few GB.
MAX_GROUP_SAMPLES = 16_000 * 300
# The conv layers' row counts (up to 3,200 per audio second) are large: bigger fixed blocks on the CPU
# (fewer calls; any fixed size is invariant).
CPU_BLOCK_ROWS = 1024


def frontend_rows(device: torch.device, matmul: str = "auto") -> RowOps:
    """The RowOps of the conv stack: as the transformer's, with CPU_BLOCK_ROWS-row blocks on the CPU."""
    return RowOps(device, matmul, CPU_BLOCK_ROWS if device.type == "cpu" else None)


class InvariantFeatureEncoder:
    """`HubertFeatureEncoder` on a list of 1-D waves (already zero-padded as the model expects), returning
    one (frames_i, conv_dim) tensor per wave, channels last."""

    def __init__(self, model: HubertModel, rows: RowOps) -> None:
        cfg = model.config
        if cfg.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm={cfg.feat_extract_norm!r} is not supported")
        self.rows, self.group_norm = rows, cfg.feat_extract_norm == "group"
        self.layers = []
        with torch.no_grad():
            for layer in model.feature_extractor.conv_layers:
                w = layer.conv.weight  # (out, in, kernel) -> (out, kernel * in): kernel-major like the windows
                flat = w.permute(0, 2, 1).reshape(w.shape[0], -1).contiguous()
                self.layers.append((flat, layer.conv.bias, w.shape[2], layer.conv.stride[0], layer))

    @torch.no_grad()
    def __call__(self, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        group: list[torch.Tensor] = []
        for wave in waves:
            if group and sum(map(len, group)) + len(wave) > MAX_GROUP_SAMPLES:
                out += self._encode(group)
                group = []
            group.append(wave)
        return out + (self._encode(group) if group else [])

    def _encode(self, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x = torch.cat(list(waves))[:, None]
        lengths = [int(w.shape[0]) for w in waves]
        for i, (weight, bias, kernel, stride, layer) in enumerate(self.layers):
            out_lengths = [(n - kernel) // stride + 1 for n in lengths]
            if min(out_lengths) <= 0:
                raise ValueError(f"a wave of {min(lengths)} samples is too short for conv layer {i}")
            first = window_starts(lengths, out_lengths, stride, x.device)
            windows = all_windows(x, kernel)

            def conv(rows: torch.Tensor, windows=windows, weight=weight, bias=bias, layer=layer,
                     normed=i == 0 and self.group_norm):
                y = self.rows.linear(windows[rows], weight, bias)
                if normed:  # group norm over time comes after the matmul, per utterance: activation later
                    return y
                if not self.group_norm:  # "layer": a layer norm over channels, per frame
                    norm = layer.layer_norm
                    y = F.layer_norm(y, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
                return layer.activation(y)

            x = self.rows.rowwise(conv, first)
            if i == 0 and self.group_norm:
                _group_norm_per_item(x, out_lengths, layer.layer_norm)
                x = self.rows.rowwise(layer.activation, x)
            lengths = out_lengths
        return list(x.split(lengths))


def window_starts(lengths: list[int], out_lengths: list[int], stride: int, device: torch.device) -> torch.Tensor:
    """(sum(out_lengths),) first input row of each output frame in the concatenated input: output frame t of
    utterance i reads input rows start_i + stride * t + (0 .. kernel - 1), all inside utterance i."""
    starts = torch.tensor([0] + lengths[:-1], device=device).cumsum(0)
    out_starts = torch.tensor([0] + out_lengths[:-1], device=device).cumsum(0)
    total = sum(out_lengths)
    counts = torch.tensor(out_lengths, device=device)
    item = torch.repeat_interleave(torch.arange(len(lengths), device=device), counts, output_size=total)
    return starts[item] + stride * (torch.arange(total, device=device) - out_starts[item])


def _group_norm_per_item(x: torch.Tensor, lengths: list[int], norm: torch.nn.GroupNorm) -> None:
    """In place: each utterance's frames normalised per channel over its own frames (GroupNorm with one
    channel per group, as HuBERT-base's conv layer 0), statistics and affine in float32."""
    if norm.num_groups != norm.num_channels:
        raise ValueError("only GroupNorm with one channel per group (HuBERT's conv layer 0) is supported")
    weight, bias = norm.weight.float(), norm.bias.float()
    lo = 0
    for n in lengths:
        item = x[lo:lo + n].float()
        mean = item.sum(dim=0) / n  # two passes (no E[x²] - E[x]² cancellation); a column sum is fast on CPU too
        var = (item - mean).square_().sum(dim=0) / n
        scale = torch.rsqrt(var + norm.eps) * weight
        x[lo:lo + n] = torch.addcmul(bias - mean * scale, item, scale).to(x.dtype)
        lo += n
