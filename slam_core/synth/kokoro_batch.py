"""A batched, masked forward pass of Kokoro's `KModel` (kokoro 0.9.4): several utterances of different
lengths in one call, each giving the audio it would give alone.

`KModel.forward_with_tokens` takes one utterance: its LSTMs run unpacked and its AdaIN layers normalise
over the whole time axis, so zero-padding a batch would change every item. Here the same sub-modules run
with the padding accounted for:

- LSTMs are packed by each item's length (the text encoders already do this);
- instance norms use each item's valid frames only, and padded frames are zeroed before every convolution,
  so a convolution sees exactly the zeros it would see at the end of a lone item;
- the harmonic source (interpolations, cumulative phase, STFT with reflect padding) and the final inverse
  STFT run per item, because their edges would otherwise read the neighbouring padding;
- decoder noise is drawn per item from a generator seeded by the caller, in the order the stock model
  draws it, so an item's audio does not depend on which items share its batch.

With one item and no padding this is the stock computation (same modules, same order, same random draws):
tests compare it with `KModel.forward` and batched items with lone ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class KokoroItem:
    """One utterance for the batched forward."""

    input_ids: list[int]
    """Phoneme token ids with the BOS/EOS 0 at both ends, at most the model's context length."""
    ref_s: torch.Tensor
    """Style vector (1, 256) from the voice pack row for this utterance's phoneme count."""
    seed: int
    """Seed of the decoder noise (initial harmonic phases and additive noise)."""


def _frame_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, 1, width) float mask: 1 on each item's first `lengths[b]` frames."""
    return (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).float().unsqueeze(1)


def _lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Run a batch-first LSTM over (B, T, C), packed when items differ in length; padded output is zero."""
    if bool((lengths == x.shape[1]).all()):
        return lstm(x)[0]
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


def _adain(layer, x: torch.Tensor, s: torch.Tensor, mask: torch.Tensor, full: bool) -> torch.Tensor:
    """Kokoro's AdaIN1d with instance statistics over valid frames; padded frames come out zero."""
    h = layer.fc(s)
    gamma, beta = torch.chunk(h.view(h.size(0), h.size(1), 1), chunks=2, dim=1)
    if full:  # no padding anywhere: the stock module, bit for bit
        return (1 + gamma) * layer.norm(x) + beta
    norm = layer.norm
    count = mask.sum(-1, keepdim=True)
    mean = (x * mask).sum(-1, keepdim=True) / count
    var = (((x - mean) * mask) ** 2).sum(-1, keepdim=True) / count
    normed = (x - mean) * torch.rsqrt(var + norm.eps)
    if norm.affine:
        normed = normed * norm.weight[None, :, None] + norm.bias[None, :, None]
    return ((1 + gamma) * normed + beta) * mask


def _adain_resblk(block, x: torch.Tensor, s: torch.Tensor, mask: torch.Tensor, full: bool):
    """AdainResBlk1d (prosody predictor, decoder); returns (output, mask at the output's rate)."""
    out_mask = mask if block.upsample_type == "none" else mask.repeat_interleave(2, dim=-1)
    r = block.actv(_adain(block.norm1, x, s, mask, full))
    r = block.pool(r) * out_mask
    r = block.conv1(block.dropout(r)) * out_mask
    r = block.actv(_adain(block.norm2, r, s, out_mask, full))
    r = block.conv2(block.dropout(r))
    out = (r + block._shortcut(x)) * torch.rsqrt(torch.tensor(2))
    return out * out_mask, out_mask


def _adain_resblock1(block, x: torch.Tensor, s: torch.Tensor, mask: torch.Tensor, full: bool) -> torch.Tensor:
    """AdaINResBlock1 (the iSTFTNet generator's residual stack with Snake activations)."""
    for c1, c2, n1, n2, a1, a2 in zip(block.convs1, block.convs2, block.adain1, block.adain2,
                                      block.alpha1, block.alpha2):
        xt = _adain(n1, x, s, mask, full)
        xt = xt + (1 / a1) * (torch.sin(a1 * xt) ** 2)
        xt = c1(xt) * mask
        xt = _adain(n2, xt, s, mask, full)
        xt = xt + (1 / a2) * (torch.sin(a2 * xt) ** 2)
        xt = c2(xt)
        x = (xt + x) * mask
    return x


def _harmonic_source(generator, f0_curve: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """One item's (1, n_fft + 2, frames) harmonic-plus-noise spectrum: SineGen and SourceModuleHnNSF of
    kokoro.istftnet with their random draws taken from `rng`, in the stock order."""
    sine_gen = generator.m_source.l_sin_gen
    f0 = generator.f0_upsamp(f0_curve[:, None]).transpose(1, 2)
    harmonics = torch.arange(1, sine_gen.harmonic_num + 2, device=f0.device, dtype=f0.dtype)
    fn = f0 * harmonics[None, None, :]
    rad = (fn / sine_gen.sampling_rate) % 1
    rand_ini = torch.rand(fn.shape[0], fn.shape[2], device=fn.device, generator=rng)
    rand_ini[:, 0] = 0
    rad[:, 0, :] = rad[:, 0, :] + rand_ini
    scale = sine_gen.upsample_scale
    rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / scale, mode="linear").transpose(1, 2)
    phase = torch.cumsum(rad, dim=1) * 2 * torch.pi
    phase = F.interpolate(phase.transpose(1, 2) * scale, scale_factor=scale, mode="linear").transpose(1, 2)
    sines = torch.sin(phase) * sine_gen.sine_amp
    uv = (f0 > sine_gen.voiced_threshold).type(torch.float32)
    noise_amp = uv * sine_gen.noise_std + (1 - uv) * sine_gen.sine_amp / 3
    # randn_like's own recipe: `sines` is a transposed view, and the stock draw follows its memory layout
    noise = noise_amp * torch.empty_like(sines).normal_(generator=rng)
    sines = sines * uv + noise
    source = generator.m_source.l_tanh(generator.m_source.l_linear(sines)).transpose(1, 2).squeeze(1)
    spec, phase_spec = generator.stft.transform(source)
    return torch.cat([spec, phase_spec], dim=1)


def _generator(generator, x, s, f0_curve, frames: torch.Tensor, rngs: list[torch.Generator], full: bool):
    """iSTFTNet generator over a padded batch; returns one waveform per item, trimmed to its length.
    `x` is at twice the alignment frame rate, `frames` the items' alignment frame counts."""
    batch = x.shape[0]
    up = 2 * frames  # decoder rate: two steps per alignment frame
    # phase accumulation and the STFTs stay float32 under autocast: in bf16 a cumulative phase of thousands of
    # radians keeps no fractional part
    with torch.autocast(x.device.type, enabled=False):
        sources = [_harmonic_source(generator, f0_curve[b:b + 1, :int(up[b])].float(), rngs[b]) for b in range(batch)]
    width = max(src.shape[-1] for src in sources)
    har = x.new_zeros(batch, sources[0].shape[1], width)
    for b, src in enumerate(sources):
        har[b, :, :src.shape[-1]] = src[0]
    lengths = up.clone()
    for i in range(generator.num_upsamples):
        x = F.leaky_relu(x, negative_slope=0.1)
        lengths = lengths * generator.ups[i].stride[0]
        last = i == generator.num_upsamples - 1
        if last:
            lengths = lengths + 1  # reflection pad of one step on the left
        x_source = generator.noise_convs[i](har)
        mask = _frame_mask(lengths, x_source.shape[-1])
        x_source = _adain_resblock1(generator.noise_res[i], x_source * mask, s, mask, full)
        x = generator.ups[i](x)
        if last:
            x = generator.reflection_pad(x)
        x = (x + x_source) * mask
        xs = None
        for j in range(generator.num_kernels):
            y = _adain_resblock1(generator.resblocks[i * generator.num_kernels + j], x, s, mask, full)
            xs = y if xs is None else xs + y
        x = xs / generator.num_kernels
    x = generator.conv_post(F.leaky_relu(x) * mask)
    bins = generator.post_n_fft // 2 + 1
    waves = []
    with torch.autocast(x.device.type, enabled=False):
        for b in range(batch):
            item = x[b:b + 1, :, :int(lengths[b])].float()
            waves.append(generator.stft.inverse(torch.exp(item[:, :bins, :]), torch.sin(item[:, bins:, :]))[0, 0])
    return waves


def _decoder(decoder, asr, f0_curve, n_curve, s, frames: torch.Tensor, rngs, full: bool):
    mask = _frame_mask(frames, asr.shape[-1])
    f0 = decoder.F0_conv(f0_curve.unsqueeze(1)) * mask
    n = decoder.N_conv(n_curve.unsqueeze(1)) * mask
    x, _ = _adain_resblk(decoder.encode, torch.cat([asr, f0, n], dim=1), s, mask, full)
    asr_res = decoder.asr_res(asr) * mask
    res = True
    for block in decoder.decode:
        if res:
            x = torch.cat([x, asr_res, f0, n], dim=1)
        x, mask = _adain_resblk(block, x, s, mask, full)
        if block.upsample_type != "none":
            res = False
    return _generator(decoder.generator, x, s, f0_curve, frames, rngs, full)


def _prosody_curves(predictor, en, s, frames: torch.Tensor, full: bool):
    """F0 and energy curves (B, 2 * frames) with the padding zeroed (ProsodyPredictor.F0Ntrain)."""
    x = _lstm(predictor.shared, en.transpose(-1, -2), frames).transpose(-1, -2)
    mask = _frame_mask(frames, en.shape[-1])
    curves = []
    for blocks, proj in ((predictor.F0, predictor.F0_proj), (predictor.N, predictor.N_proj)):
        y, m = x, mask
        for block in blocks:
            y, m = _adain_resblk(block, y, s, m, full)
        curves.append((proj(y) * m).squeeze(1))
    return curves


def _stretch(features: torch.Tensor, durations: list[torch.Tensor], width: int) -> torch.Tensor:
    """(B, C, T) token features repeated by each item's durations into (B, C, width) frames, zero-padded
    (the stock model multiplies by a one-hot alignment matrix; repeating gives the same numbers)."""
    out = features.new_zeros(features.shape[0], features.shape[1], width)
    for b, dur in enumerate(durations):
        stretched = features[b, :, :len(dur)].repeat_interleave(dur, dim=-1)
        out[b, :, :stretched.shape[-1]] = stretched
    return out


@torch.no_grad()
def forward_batch(model, items: list[KokoroItem], speed: float = 1.0,
                  autocast_dtype: torch.dtype | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Audio (samples,) and per-token durations (tokens,) for each item, in input order, on the model's device.

    `autocast_dtype` (CUDA): run under torch.autocast in that dtype (bfloat16/float16); audio comes back float32.
    """
    if autocast_dtype is None:
        return _forward_batch(model, items, speed)
    with torch.autocast(device_type=model.device.type, dtype=autocast_dtype):
        return [(wave.float(), dur) for wave, dur in _forward_batch(model, items, speed)]


def _forward_batch(model, items: list[KokoroItem], speed: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    device = model.device
    lengths = torch.tensor([len(it.input_ids) for it in items], device=device)
    width = int(lengths.max())
    if width > model.context_length:
        raise ValueError(f"{width} tokens exceed Kokoro's context of {model.context_length}")
    input_ids = torch.zeros(len(items), width, dtype=torch.long, device=device)
    for b, it in enumerate(items):
        input_ids[b, :len(it.input_ids)] = torch.tensor(it.input_ids, device=device)
    text_mask = torch.arange(width, device=device)[None, :] >= lengths[:, None]
    ref_s = torch.cat([it.ref_s.reshape(1, -1) for it in items]).to(device)
    s = ref_s[:, 128:]
    full_text = bool((lengths == width).all())

    bert_dur = model.bert(input_ids, attention_mask=(~text_mask).int())
    d_en = model.bert_encoder(bert_dur).transpose(-1, -2)
    d = model.predictor.text_encoder(d_en, s, lengths, text_mask)
    x = _lstm(model.predictor.lstm, d, lengths)
    duration = torch.sigmoid(model.predictor.duration_proj(x)).sum(dim=-1) / speed
    pred_dur = torch.round(duration).clamp(min=1).long()
    durations = [pred_dur[b, :int(lengths[b])] for b in range(len(items))]
    frames = torch.stack([dur.sum() for dur in durations])
    n_frames = int(frames.max())
    full = full_text and bool((frames == n_frames).all())

    en = _stretch(d.transpose(-1, -2), durations, n_frames)
    f0_curve, n_curve = _prosody_curves(model.predictor, en, s, frames, full)
    t_en = model.text_encoder(input_ids, lengths, text_mask)
    asr = _stretch(t_en, durations, n_frames)
    rngs = [torch.Generator(device=device).manual_seed(it.seed) for it in items]
    waves = _decoder(model.decoder, asr, f0_curve, n_curve, ref_s[:, :128], frames, rngs, full)
    return list(zip(waves, durations))
