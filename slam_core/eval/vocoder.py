"""Unit HiFi-GAN vocoder with a duration predictor (textlesslib `CodeHiFiGANVocoder`; docs/published-artifacts.md).

Our own implementation; parameter names and shapes match the published textlesslib checkpoint for the
mHuBERT-25Hz/500-unit vocoder, so its state dict (key "generator", weight-norm `weight_g`/`weight_v` pairs) loads
strictly. Weight norm is folded into plain weights right after loading, as textlesslib does for inference.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from slam_core.device import pick_device

log = logging.getLogger(__name__)

OUTPUT_SAMPLE_RATE_HZ = 16_000
DEFAULT_VOCODER_NAME = "mhubert-base-25hz-kmeans-500-hifigan"
CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/textless_nlp/twist/speech_tokenizer/hifigan_lj_mhubert_base_25hz.pt"
CONFIG_URL = ("https://dl.fbaipublicfiles.com/textless_nlp/twist/speech_tokenizer/"
              "hifigan_lj_mhubert_base_25hz_config.json")
CHECKPOINT_FILE = "hifigan_lj_mhubert_base_25hz.pt"
CONFIG_FILE = "hifigan_lj_mhubert_base_25hz_config.json"
RESBLOCK_SLOPE = 0.1  # HiFi-GAN's LeakyReLU slope inside the upsampling stages
POST_SLOPE = 0.01  # the final activation uses torch's default slope in the reference model


class VocoderNotFoundError(FileNotFoundError):
    """Vocoder checkpoint/config files that are not on this machine; the message says where to get them."""


def _missing_vocoder_message(what: str) -> str:
    root = os.environ.get("TEXTLESS_CHECKPOINT_ROOT", "~/.textless")
    return (f"unit vocoder: {what}. Download {CHECKPOINT_URL} and {CONFIG_URL} and pass the directory holding "
            f"them (or the two file paths), or put them in $TEXTLESS_CHECKPOINT_ROOT ({root}).")


def _conv_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """HiFi-GAN V1 residual block: three (dilated conv, plain conv) pairs, each added back to its input."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_conv_padding(kernel_size, d)))
            for d in dilations)
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=_conv_padding(kernel_size)))
            for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dilated, plain in zip(self.convs1, self.convs2):
            y = dilated(F.leaky_relu(x, RESBLOCK_SLOPE))
            x = x + plain(F.leaky_relu(y, RESBLOCK_SLOPE))
        return x


class VariancePredictor(nn.Module):
    """Log-duration per unit: 2 x [Conv1d + ReLU, LayerNorm, dropout] then a linear projection to 1."""

    def __init__(self, in_dim: int, hidden_dim: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        # Sequential wrappers keep the published key names (conv1.0.weight, conv2.0.weight)
        self.conv1 = nn.Sequential(
            nn.Conv1d(in_dim, hidden_dim, kernel_size, padding=(kernel_size - 1) // 2), nn.ReLU())
        self.ln1 = nn.LayerNorm(hidden_dim)
        # the reference model pads the second conv by 1 whatever the kernel size
        self.conv2 = nn.Sequential(nn.Conv1d(hidden_dim, hidden_dim, kernel_size, padding=1), nn.ReLU())
        self.ln2 = nn.LayerNorm(hidden_dim)
        self.proj = nn.Linear(hidden_dim, 1)
        self.dropout = dropout

    def forward(self, x_btc: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x_btc.transpose(1, 2)).transpose(1, 2)
        x = F.dropout(self.ln1(x), self.dropout, self.training)
        x = self.conv2(x.transpose(1, 2)).transpose(1, 2)
        x = F.dropout(self.ln2(x), self.dropout, self.training)
        return self.proj(x).squeeze(-1)


class UnitHifiGan(nn.Module):
    """Unit embedding (`dict`) -> optional duration predictor -> HiFi-GAN V1 generator (1 output channel)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        unsupported = [k for k in ("f0", "multispkr", "multistyle", "embedder_params") if cfg.get(k)]
        if unsupported:
            raise ValueError(f"unit vocoder config: options {unsupported} are not supported "
                             "(single-speaker unit vocoder only)")
        channels = int(cfg["upsample_initial_channel"])
        self.upsample_rates = [int(u) for u in cfg["upsample_rates"]]
        self.n_kernels = len(cfg["resblock_kernel_sizes"])
        self.dict = nn.Embedding(int(cfg["num_embeddings"]), int(cfg["embedding_dim"]))
        dur = cfg.get("dur_predictor_params")
        self.dur_predictor = (VariancePredictor(int(dur["encoder_embed_dim"]), int(dur["var_pred_hidden_dim"]),
                                                int(dur["var_pred_kernel_size"]), float(dur["var_pred_dropout"]))
                              if dur else None)
        self.conv_pre = weight_norm(nn.Conv1d(int(cfg.get("model_in_dim", 80)), channels, 7, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(self.upsample_rates, cfg["upsample_kernel_sizes"])):
            c_in, c_out = channels // 2**i, channels // 2**(i + 1)
            self.ups.append(weight_norm(nn.ConvTranspose1d(c_in, c_out, kernel, rate, padding=(kernel - rate) // 2)))
            for k, dilations in zip(cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"]):
                self.resblocks.append(ResBlock1(c_out, k, dilations))
        self.conv_post = weight_norm(nn.Conv1d(channels // 2**len(self.upsample_rates), 1, 7, padding=3))

    @property
    def samples_per_frame(self) -> int:
        return int(np.prod(self.upsample_rates))

    def predict_durations(self, units: torch.Tensor) -> torch.Tensor:
        """Frames per unit for a 1-D unit tensor: clamp(round(exp(log_dur) - 1), min=1)."""
        if self.dur_predictor is None:
            raise ValueError("this vocoder has no duration predictor: pass durations explicitly")
        log_dur = self.dur_predictor(self.dict(units[None]))[0]
        return torch.clamp(torch.round(torch.exp(log_dur) - 1).long(), min=1)

    def forward(self, units: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        """Waveform (1-D) of 1-D `units` held for `durations` frames each."""
        x = self.dict(units[None]).transpose(1, 2)
        x = torch.repeat_interleave(x, durations, dim=2)
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, RESBLOCK_SLOPE))
            blocks = self.resblocks[i * self.n_kernels:(i + 1) * self.n_kernels]
            x = sum(block(x) for block in blocks) / self.n_kernels
        x = self.conv_post(F.leaky_relu(x, POST_SLOPE))
        return torch.tanh(x)[0, 0]


def to_parametrization_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename legacy weight-norm keys (`x.weight_g`, `x.weight_v`, from torch.nn.utils.weight_norm) to the
    parametrization names (`x.parametrizations.weight.original0/1`); other keys pass through unchanged."""
    renamed = {}
    for key, value in state_dict.items():
        if key.endswith(".weight_g"):
            key = key[: -len(".weight_g")] + ".parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key[: -len(".weight_v")] + ".parametrizations.weight.original1"
        renamed[key] = value
    return renamed


def remove_weight_norm(model: nn.Module) -> nn.Module:
    """Fold every weight-norm parametrization into a plain weight (inference needs no g/v split)."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def read_vocoder_config(config: str | Path) -> dict[str, Any]:
    path = Path(config).expanduser()
    if not path.is_file():
        raise VocoderNotFoundError(_missing_vocoder_message(f"config {path} not found"))
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"unit vocoder config {path}: not valid JSON ({err})") from None


def _load_generator_state(checkpoint: Path, allow_unsafe_pickle: bool) -> dict[str, torch.Tensor]:
    if not checkpoint.is_file():
        raise VocoderNotFoundError(_missing_vocoder_message(f"checkpoint {checkpoint} not found"))
    try:
        blob = torch.load(checkpoint, map_location="cpu", weights_only=not allow_unsafe_pickle)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError/RuntimeError variants here
        if allow_unsafe_pickle:
            raise ValueError(
                f"unit vocoder checkpoint {checkpoint}: cannot be read ({type(err).__name__}: {err})") from None
        raise ValueError(
            f"unit vocoder checkpoint {checkpoint}: not loadable with torch.load(weights_only=True) "
            f"({type(err).__name__}). If you trust this file, retry with allow_unsafe_pickle=True "
            f"(CLI: --allow-unsafe-pickle); unpickling can run arbitrary code.") from None
    if not isinstance(blob, dict) or "generator" not in blob:
        keys = list(blob)[:5] if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"unit vocoder checkpoint {checkpoint}: expected a dict with key 'generator', got {keys}")
    return blob["generator"]


@dataclass
class Vocoder:
    """A loaded unit vocoder: the generator in eval mode plus its native output rate."""

    model: UnitHifiGan
    sample_rate_hz: int
    device: torch.device

    @property
    def num_units(self) -> int:
        return self.model.dict.num_embeddings


def load_vocoder(
    checkpoint: str | Path, config: str | Path, device: str | torch.device = "cpu", allow_unsafe_pickle: bool = False,
) -> Vocoder:
    """Load a textlesslib unit HiFi-GAN checkpoint (state dict under "generator") and its config JSON.

    Weight-norm keys may be legacy (`weight_g`/`weight_v`), parametrized, or already folded (`weight`); loading
    is strict, so a checkpoint that does not fit the config fails with the mismatching keys named.
    """
    cfg = read_vocoder_config(config)
    state = _load_generator_state(Path(checkpoint).expanduser(), allow_unsafe_pickle)
    model = UnitHifiGan(cfg)
    if any(k.endswith(".weight") and k.startswith(("conv_pre", "conv_post", "ups.")) for k in state):
        remove_weight_norm(model)  # the checkpoint was saved with weight norm already folded
    try:
        model.load_state_dict(to_parametrization_keys(state), strict=True)
    except RuntimeError as err:
        raise ValueError(f"unit vocoder checkpoint {checkpoint} does not match config {config}: {err}") from None
    remove_weight_norm(model)
    device = pick_device(device) if isinstance(device, str) else device
    return Vocoder(model.eval().to(device), int(cfg.get("sampling_rate", OUTPUT_SAMPLE_RATE_HZ)), device)


def resolve_vocoder_files(dir_or_name: str | Path = DEFAULT_VOCODER_NAME) -> tuple[Path, Path]:
    """(checkpoint, config) for a directory holding them, a checkpoint file with its config beside it, or the
    published vocoder's name, looked up in $TEXTLESS_CHECKPOINT_ROOT (default ~/.textless). Nothing is downloaded."""
    if str(dir_or_name) == DEFAULT_VOCODER_NAME:
        folder = Path(os.environ.get("TEXTLESS_CHECKPOINT_ROOT", "~/.textless")).expanduser()
    elif Path(dir_or_name).expanduser().is_file():  # the checkpoint itself: its config sits beside it
        ckpt = Path(dir_or_name).expanduser()
        for cfg in (ckpt.with_name(f"{ckpt.stem}_config.json"), ckpt.with_name("config.json")):
            if cfg.is_file():
                return ckpt, cfg
        raise VocoderNotFoundError(_missing_vocoder_message(
            f"no {ckpt.stem}_config.json or config.json beside {ckpt}"))
    else:
        folder = Path(dir_or_name).expanduser()
        if not folder.is_dir():
            raise VocoderNotFoundError(_missing_vocoder_message(f"{folder} is not a directory"))
    ckpt, cfg = folder / CHECKPOINT_FILE, folder / CONFIG_FILE
    if not ckpt.is_file() or not cfg.is_file():
        # a directory with exactly one .pt and one .json is taken as a custom vocoder
        pts, jsons = sorted(folder.glob("*.pt")), sorted(folder.glob("*.json"))
        if len(pts) == 1 and len(jsons) == 1 and str(dir_or_name) != DEFAULT_VOCODER_NAME:
            return pts[0], jsons[0]
        raise VocoderNotFoundError(_missing_vocoder_message(f"{CHECKPOINT_FILE} / {CONFIG_FILE} not found in {folder}"))
    return ckpt, cfg


@torch.no_grad()
def vocode(vocoder: Vocoder, units: Sequence[int] | np.ndarray, durations: Sequence[int] | None = None) -> np.ndarray:
    """Float32 16 kHz waveform of 1-D deduplicated unit ids (0..num_units-1; negative ids are dropped).

    Durations (frames per unit) come from the duration predictor unless given (e.g. from a UNITS row).
    """
    ids = np.asarray(units, dtype=np.int64).reshape(-1)
    keep = ids >= 0
    if durations is not None:
        durations = np.asarray(durations, dtype=np.int64).reshape(-1)
        if durations.shape != ids.shape:
            raise ValueError(f"vocode: {ids.size} units but {durations.size} durations")
        durations = durations[keep]
    ids = ids[keep]
    if ids.size == 0:
        return np.zeros(0, dtype=np.float32)
    if ids.max() >= vocoder.num_units:
        raise ValueError(f"vocode: unit id {int(ids.max())} out of range for a {vocoder.num_units}-unit vocoder")
    units_t = torch.as_tensor(ids, device=vocoder.device)
    dur_t = (vocoder.model.predict_durations(units_t) if durations is None
             else torch.as_tensor(np.maximum(durations, 1), device=vocoder.device))
    wave = vocoder.model(units_t, dur_t).float().cpu().numpy()
    if vocoder.sample_rate_hz != OUTPUT_SAMPLE_RATE_HZ:
        import soxr

        wave = soxr.resample(wave, vocoder.sample_rate_hz, OUTPUT_SAMPLE_RATE_HZ)
    return np.ascontiguousarray(wave, dtype=np.float32)


def write_wav_16k(path: str | Path, wave: np.ndarray) -> Path:
    """Write a 16 kHz mono 16-bit WAV atomically."""
    import soundfile as sf

    from slam_core.atomic import atomic_path

    with atomic_path(path) as tmp:
        sf.write(tmp, wave, OUTPUT_SAMPLE_RATE_HZ, subtype="PCM_16", format="WAV")
    return Path(path)
