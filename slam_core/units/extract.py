"""Speech -> deduplicated units: HuBERT layer features, nearest centroid, run-length dedup, Parquet shards.

Batch invariance: the HuBERT-base feature encoder normalises each channel over the whole (padded)
utterance (GroupNorm) and its positional conv sees the padding, so padded batches change the
features of the shorter items. Batches here therefore only ever hold waves of exactly the same
length (no padding at all), which makes batched extraction give the units of one-at-a-time extraction.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import HubertModel

from slam_core.audio.io import TARGET_SAMPLE_RATE_HZ, BadAudioError
from slam_core.units.encoder import PAD_SAMPLES, frames_for_samples
from slam_core.units.quantizer import assign_units

log = logging.getLogger(__name__)

MAX_DURATION = np.iinfo(np.uint16).max


def dedup_units(frame_units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse runs of equal units; run lengths become durations (runs > 65535 frames are split)."""
    frame_units = np.asarray(frame_units)
    if frame_units.size == 0:
        return np.zeros(0, np.uint16), np.zeros(0, np.uint16)
    starts = np.flatnonzero(np.r_[True, frame_units[1:] != frame_units[:-1]])
    lengths = np.diff(np.r_[starts, frame_units.size])
    values = frame_units[starts]
    if lengths.max() > MAX_DURATION:
        # uint16 durations: a long run becomes several entries of the same unit.
        pieces = [(v, n) for v, total in zip(values, lengths) for n in _split_run(int(total))]
        values = np.array([p[0] for p in pieces])
        lengths = np.array([p[1] for p in pieces])
    return values.astype(np.uint16), lengths.astype(np.uint16)


def _split_run(total: int) -> list[int]:
    full, rest = divmod(total, MAX_DURATION)
    return [MAX_DURATION] * full + ([rest] if rest else [])


class UnitExtractor:
    """Waves (16 kHz mono float32) -> layer features -> per-frame units -> deduplicated units.

    `centroids` may be None to only extract features (for fitting k-means). Batches group waves of
    identical length, so results do not depend on batch size or on the other waves in a call.
    """

    def __init__(
        self,
        encoder: HubertModel,
        centroids: np.ndarray | None,
        layer: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        dedup: bool = True,
        batch_size: int = 16,
    ) -> None:
        n_layers = encoder.config.num_hidden_layers
        if not 0 <= layer <= n_layers:
            raise ValueError(f"units.layer={layer} but the encoder has {n_layers} layers (0..{n_layers} allowed)")
        if centroids is not None and centroids.shape[1] != encoder.config.hidden_size:
            raise ValueError(
                f"centroid dim {centroids.shape[1]} != encoder hidden size {encoder.config.hidden_size} "
                f"(k-means fitted for a different encoder?)"
            )
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device, dtype).eval()
        self.centroids = centroids
        self.layer, self.dtype, self.dedup, self.batch_size = layer, dtype, dedup, batch_size

    @property
    def n_units(self) -> int:
        return 0 if self.centroids is None else int(self.centroids.shape[0])

    def n_frames(self, n_samples: int) -> int:
        """Frames (25 Hz for the real strides: floor(n_samples / 640)) the encoder keeps for a wave."""
        return max(0, frames_for_samples(self.encoder, n_samples)) if n_samples > 0 else 0

    @torch.no_grad()
    def _features_batches(self, waves: Sequence[np.ndarray], batch_size: int | None) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Yield (indices, (B, T, D) features on device) for equal-length groups of `waves`."""
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, w in enumerate(waves):
            by_length[len(w)].append(i)
        bs = batch_size or self.batch_size
        for length in sorted(by_length, reverse=True):
            idx = by_length[length]
            n_frames = self.n_frames(length)
            for lo in range(0, len(idx), bs):
                chunk = idx[lo : lo + bs]
                if n_frames <= 0:  # shorter than one frame: nothing to encode
                    yield chunk, torch.zeros(len(chunk), 0, self.encoder.config.hidden_size)
                    continue
                batch = torch.from_numpy(np.stack([np.asarray(waves[i], np.float32) for i in chunk]))
                batch = F.pad(batch, (PAD_SAMPLES, PAD_SAMPLES)).to(self.device, self.dtype)
                hidden = self.encoder(batch, output_hidden_states=True).hidden_states[self.layer]
                if hidden.shape[1] != n_frames:
                    raise RuntimeError(f"encoder gave {hidden.shape[1]} frames for {length} samples, expected {n_frames}")
                yield chunk, hidden

    def features(self, waves: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        """Layer features per wave, float32 (n_frames, hidden_size)."""
        out: list[np.ndarray] = [np.zeros(0)] * len(waves)
        for idx, hidden in self._features_batches(waves, batch_size):
            for j, i in enumerate(idx):
                out[i] = hidden[j].float().cpu().numpy()
        return out

    def frames(self, waves: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        """Unit id per 25 Hz frame per wave (int64, length n_frames)."""
        if self.centroids is None:
            raise ValueError("this UnitExtractor has no centroids (fit or load k-means first)")
        out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(waves)
        for idx, hidden in self._features_batches(waves, batch_size):
            if hidden.shape[1] == 0:
                continue
            flat = assign_units(hidden.reshape(-1, hidden.shape[-1]), self.centroids)
            for j, units in zip(idx, flat.reshape(len(idx), -1)):
                out[j] = units
        return out

    def units(self, waves: Sequence[np.ndarray], batch_size: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(units uint16, durations uint16) per wave; without dedup every duration is 1."""
        result = []
        for f in self.frames(waves, batch_size):
            if self.dedup:
                result.append(dedup_units(f))
            else:
                result.append((f.astype(np.uint16), np.ones(len(f), np.uint16)))
        return result


# ---- decoding overlapped with compute -------------------------------------------------------------

Loader = Callable[[], np.ndarray]
BadItem = tuple[str, str, str]


def _load(item_id: str, loader: Loader) -> np.ndarray | BadItem:
    try:
        return loader()
    except BadAudioError as err:
        return (item_id, err.reason, err.detail or err.path)


def decoded_windows(
    items: Sequence[tuple[str, Loader]], window: int, n_threads: int = 2
) -> Iterator[list[tuple[str, np.ndarray | BadItem]]]:
    """Decode items in a thread pool, one window ahead of the consumer, yielding windows in input order."""
    windows = [items[i : i + window] for i in range(0, len(items), window)]
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        submit = lambda w: [(item_id, pool.submit(_load, item_id, fn)) for item_id, fn in w]  # noqa: E731
        pending = submit(windows[0]) if windows else []
        for k in range(len(windows)):
            current = pending
            pending = submit(windows[k + 1]) if k + 1 < len(windows) else []
            yield [(item_id, fut.result()) for item_id, fut in current]


def extract_items(
    items: Sequence[tuple[str, Loader]], extractor: UnitExtractor, batch_size: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, int, float]], list[BadItem]]:
    """Decode and tokenise items; returns ({id: (units, durations, n_frames, audio_s)}, bad items)."""
    results: dict[str, tuple[np.ndarray, np.ndarray, int, float]] = {}
    bad: list[BadItem] = []
    # A window of several batches lets equal-length waves meet (only those share a batch).
    for window in decoded_windows(items, window=max(batch_size * 4, 1)):
        good = []
        for item_id, value in window:
            if isinstance(value, tuple):
                bad.append(value)
            elif extractor.n_frames(len(value)) <= 0:
                bad.append((item_id, "too_short", f"{len(value)} samples < one frame"))
            else:
                good.append((item_id, value))
        units = extractor.units([w for _, w in good], batch_size)
        for (item_id, wave), (u, d) in zip(good, units):
            results[item_id] = (u, d, int(d.sum(dtype=np.int64)), len(wave) / TARGET_SAMPLE_RATE_HZ)
    for item_id, reason, detail in bad:
        log.warning("skipped %s: %s (%s)", item_id, reason, detail)
    return results, bad
