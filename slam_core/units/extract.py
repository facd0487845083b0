"""Speech -> deduplicated units: HuBERT layer features, nearest centroid, run-length dedup (shards: `shards.py`).

Batch invariance: a segment's units must not depend on which other segments share its batch. The
HuBERT-base feature encoder normalises each channel over the whole utterance (GroupNorm), and SlamKit's
mask-less padded batches let the padding leak into the features of shorter items; and on a GPU every
kernel is chosen per batch shape, so even equal-length batches change the rounding. Here the conv encoder
must see exactly each item's own samples. By default ("invariant") the whole encoder runs on the batch's
concatenated samples and frames, without padding, with row-invariant kernels: the conv stack as gathered
windows and matmuls with a per-item GroupNorm (`frontend.py`), the transformer with per-item attention
(`invariant.py`), and on CUDA the nearest-centroid search as one row-invariant matmul; so units equal
one-at-a-time extraction bit for bit whatever the batch, on CPU and GPU. "padded" batching (the conv
stack per item, then sorted (B, T, D) batches, masked) uses the stock kernels instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from transformers import HubertModel
from transformers.masking_utils import create_bidirectional_mask

from slam_core.audio.io import TARGET_SAMPLE_RATE_HZ, BadAudioError, read_segment_audio
from slam_core.device import pick_device, pick_dtype
from slam_core.units.encoder import PAD_SAMPLES, frames_for_samples, load_encoder, resolve_encoder
from slam_core.units.frontend import InvariantFeatureEncoder, frontend_rows
from slam_core.units.invariant import InvariantTransformer
from slam_core.units.quantizer import assign_units, fit_kmeans, load_centroids, nearest_centroid, save_centroids
from slam_core.units.validate import item_units_problem

if TYPE_CHECKING:  # the config (pydantic) is not needed to run an extractor
    from slam_core.config import UnitsConfig

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

    `centroids` may be None to only extract features (for fitting k-means). With batching="invariant"
    results do not depend on batch size or on the other waves in a call (see the module docstring).
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
        batching: str = "invariant",
        invariant_matmul: str = "auto",
        invariant_kernels: str = "rows",
    ) -> None:
        if batching not in ("invariant", "padded"):
            raise ValueError(f"units.batching={batching!r}: expected 'invariant' or 'padded'")
        n_layers = encoder.config.num_hidden_layers
        if not 0 <= layer <= n_layers:
            raise ValueError(f"units.layer={layer} but the encoder has {n_layers} layers (0..{n_layers} allowed)")
        if centroids is not None and centroids.shape[1] != encoder.config.hidden_size:
            raise ValueError(
                f"centroid dim {centroids.shape[1]} != encoder hidden size {encoder.config.hidden_size} "
                f"(k-means fitted for a different encoder?)"
            )
        if centroids is not None and centroids.shape[0] > MAX_DURATION + 1:
            raise ValueError(f"{centroids.shape[0]} centroids do not fit the uint16 unit columns")
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device, dtype).eval()
        self.centroids = centroids
        self.layer, self.dtype, self.dedup, self.batch_size, self.batching = layer, dtype, dedup, batch_size, batching
        # invariant_kernels="per_item": the previous invariant implementation (conv stack, positional conv and
        # attention one item at a time), kept as the bench's same-process baseline.
        self.invariant = (InvariantTransformer(self.encoder, layer, invariant_matmul, kernels=invariant_kernels)
                          if batching == "invariant" else None)
        self.frontend = (InvariantFeatureEncoder(self.encoder, frontend_rows(self.device, invariant_matmul))
                         if self.invariant is not None and invariant_kernels == "rows" else None)
        # On CUDA the centroids stay on the device: assignment follows the encoder without a copy per item.
        self._centroids_cuda = (torch.as_tensor(centroids, device=self.device)
                                if centroids is not None and self.device.type == "cuda" else None)
        self._assign_weights: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def n_units(self) -> int:
        return 0 if self.centroids is None else int(self.centroids.shape[0])

    def n_frames(self, n_samples: int) -> int:
        """Frames (25 Hz for the real strides: floor(n_samples / 640)) the encoder keeps for a wave."""
        return max(0, frames_for_samples(self.encoder, n_samples)) if n_samples > 0 else 0

    def batch_plan(self, frame_counts: Sequence[int], batch_size: int | None = None) -> list[list[int]]:
        """Indices of each batch: items sorted by frame count (longest first), `batch_size` at a time, in
        both modes (sorting keeps padding small; in "invariant" mode only the last row block is padded)."""
        bs = batch_size or self.batch_size
        order = sorted((i for i, n in enumerate(frame_counts) if n > 0), key=lambda i: (-frame_counts[i], i))
        return [order[lo : lo + bs] for lo in range(0, len(order), bs)]

    @torch.no_grad()
    def _features_batches(self, waves: Sequence[np.ndarray], batch_size: int | None) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
        """Yield (indices, one (n_frames, D) feature tensor on the device per item) for `waves`.

        The conv feature encoder runs one item at a time on the whole wave: HuBERT-base's GroupNorm
        normalises over all of an item's frames and convolution kernels are chosen per shape, so neither
        padding nor batching is exact there. Its output is cheap to hold, and batching starts at the frame
        level (projection + transformer), grouped by `batch_plan`.
        """
        counts = [self.n_frames(len(w)) for w in waves]
        empty = [i for i, n in enumerate(counts) if n <= 0]
        if empty:  # shorter than one frame: nothing to encode
            width = self.encoder.config.hidden_size
            yield empty, [torch.zeros(0, width, device=self.device, dtype=self.dtype) for _ in empty]
        if self.frontend is not None:
            for idx in self.batch_plan(counts, batch_size):
                conv = self.frontend([self._padded_wave(waves[i]) for i in idx])
                for i, c in zip(idx, conv):
                    if c.shape[0] != counts[i]:
                        raise RuntimeError(f"encoder gave {c.shape[0]} frames for {len(waves[i])} samples, expected {counts[i]}")
                yield idx, self.invariant(conv)
            return
        conv: dict[int, torch.Tensor] = {}
        for i, n in enumerate(counts):
            if n > 0:
                conv[i] = self.encoder.feature_extractor(self._padded_wave(waves[i])[None])[0].transpose(0, 1)  # (T, C)
                if conv[i].shape[0] != n:
                    raise RuntimeError(f"encoder gave {conv[i].shape[0]} frames for {len(waves[i])} samples, expected {n}")
        for idx in self.batch_plan(counts, batch_size):
            items = [conv.pop(i) for i in idx]
            if self.invariant is not None:
                yield idx, self.invariant(items)
            else:
                hidden = self._encode_padded(torch.nn.utils.rnn.pad_sequence(items, batch_first=True), [counts[i] for i in idx])
                yield idx, [hidden[j, : counts[i]] for j, i in enumerate(idx)]

    def _padded_wave(self, wave: np.ndarray) -> torch.Tensor:
        """One wave as the encoder expects it: 40 zeros each side, on the device in the encoder's dtype."""
        return F.pad(torch.from_numpy(np.asarray(wave, np.float32)), (PAD_SAMPLES, PAD_SAMPLES)).to(self.device, self.dtype)

    def _encode_padded(self, conv: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """`hidden_states[layer]` of HubertModel.forward from a padded batch of conv features (B, T, C),
        stopping at `layer`: padded frames are zeroed before the positional conv and masked as keys, as
        HubertModel does with an attention mask (equality with HubertModel.forward is tested)."""
        model = self.encoder
        hidden = model.feature_projection(conv)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        mask = None
        if min(lengths) != max(lengths):
            valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < torch.tensor(lengths, device=hidden.device)[:, None]
            hidden = hidden * valid[..., None].to(hidden.dtype)
            mask = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=valid)
        encoder = model.encoder
        hidden = hidden + encoder.pos_conv_embed(hidden)
        if not model.config.do_stable_layer_norm:  # post-LN (HuBERT base) normalises before the layers
            hidden = encoder.layer_norm(hidden)
        for layer in encoder.layers[: self.layer]:
            hidden = layer(hidden, attention_mask=mask)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return hidden

    def features(self, waves: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        """Layer features per wave, float32 (n_frames, hidden_size)."""
        out: list[np.ndarray] = [np.zeros((0, self.encoder.config.hidden_size), np.float32)] * len(waves)
        for idx, hidden in self._features_batches(waves, batch_size):
            for i, h in zip(idx, hidden):
                out[i] = h.float().cpu().numpy()
        return out

    def frames(self, waves: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        """Unit id per 25 Hz frame per wave (int64, length n_frames)."""
        if self.centroids is None:
            raise ValueError("this UnitExtractor has no centroids (fit or load k-means first)")
        out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(waves)
        for idx, hidden in self._features_batches(waves, batch_size):
            if self._centroids_cuda is not None and self.frontend is not None and len(idx) and len(hidden[0]):
                for i, units in zip(idx, self._assign_rows(hidden)):
                    out[i] = units
                continue
            # Per item: faiss switches from direct to BLAS distances at 20 queries, and a GPU matmul's
            # kernel follows its shape, so one call over the whole batch could resolve an item's near-ties
            # differently than alone; an item's own call has the same shape whatever its batch.
            for i, h in zip(idx, hidden):
                if len(h) == 0:
                    continue
                if self._centroids_cuda is not None:
                    out[i] = nearest_centroid(h, self._centroids_cuda).cpu().numpy()
                else:
                    out[i] = assign_units(h, self.centroids)
        return out

    def _assign_rows(self, hidden: list[torch.Tensor]) -> list[np.ndarray]:
        """Nearest centroid of every frame of a batch in one row-invariant matmul (float32: ‖c‖² − 2x·cᵀ as
        x·(−2c)ᵀ + ‖c‖²), then an exact argmin per row; a row with NaN/Inf gets -1 as on the other paths."""
        if self._assign_weights is None:
            c = self._centroids_cuda.float()
            self._assign_weights = ((-2.0 * c).contiguous(), (c * c).sum(dim=1))
        weight, bias = self._assign_weights
        x = torch.cat(hidden).float()
        ids = self.invariant.rows.rowwise(lambda rows: self.invariant.rows.linear(rows, weight, bias).argmin(dim=1), x)
        ids = torch.where(torch.isfinite(x).all(dim=1), ids, -1).cpu().numpy()
        return list(np.split(ids, np.cumsum([len(h) for h in hidden])[:-1]))

    def units(self, waves: Sequence[np.ndarray], batch_size: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(units uint16, durations uint16) per wave; without dedup every duration is 1."""
        return [self.to_units(f) for f in self.frames(waves, batch_size)]

    def to_units(self, frame_units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame unit ids -> (units uint16, durations uint16), deduplicated when configured."""
        if self.dedup:
            return dedup_units(frame_units)
        return frame_units.astype(np.uint16), np.ones(len(frame_units), np.uint16)


def build_extractor(
    cfg: UnitsConfig, data_root: Path, centroids: Path | None = None, device: str = "auto"
) -> UnitExtractor:
    """UnitExtractor from config: resolve/load the encoder, pick device and dtype, load centroids if given."""
    torch_device = pick_device(device)
    encoder = load_encoder(resolve_encoder(cfg, Path(data_root)), torch_device, pick_dtype(cfg.dtype, torch_device))
    c = load_centroids(Path(centroids)) if centroids is not None else None
    return UnitExtractor(encoder, c, cfg.layer, torch_device, encoder.dtype, cfg.dedup, cfg.batch_size, cfg.batching,
                         cfg.invariant_matmul)


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
    # A window of many batches lets waves of similar length meet, so sorted batches pad little.
    for window in decoded_windows(items, window=max(batch_size * 16, 256)):
        good = []
        for item_id, value in window:
            if isinstance(value, tuple):
                bad.append(value)
            elif extractor.n_frames(len(value)) <= 0:
                bad.append((item_id, "too_short", f"{len(value)} samples < one frame"))
            else:
                good.append((item_id, value))
        frames = extractor.frames([w for _, w in good], batch_size)
        for (item_id, wave), f in zip(good, frames):
            # checked before the uint16 cast: a -1 from NaN features must not become unit 65535
            problem = item_units_problem(f, np.ones(len(f), np.int64), extractor.n_units)
            if problem:
                bad.append((item_id, "invalid_units", problem))
                continue
            u, d = extractor.to_units(f)
            results[item_id] = (u, d, int(d.sum(dtype=np.int64)), len(wave) / TARGET_SAMPLE_RATE_HZ)
    for item_id, reason, detail in bad:
        log.warning("skipped %s: %s (%s)", item_id, reason, detail)
    return results, bad


# ---- k-means on a seeded frame sample -------------------------------------------------------------


def fit_kmeans_from_segments(
    segment_paths: Sequence[Path], extractor: UnitExtractor, cfg: UnitsConfig, seed: int, out_path: Path,
    audio_root: Path | None = None,
) -> Path:
    """Fit cfg.n_units centroids on up to cfg.kmeans_sample_frames frames sampled (seeded) from the segments.

    Segments are visited in a seeded random order until enough frames are collected (so a large corpus
    is not encoded in full), then frames are subsampled without replacement; centroids are saved atomically.
    """
    rows = [r for p in sorted(map(Path, segment_paths)) for r in pq.read_table(p).to_pylist()]
    if not rows:
        raise ValueError("fit_kmeans_from_segments: the segment shards hold no segments")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    feats: list[np.ndarray] = []
    n_collected, step = 0, max(extractor.batch_size * 4, 1)
    for lo in range(0, len(order), step):
        waves = []
        for i in order[lo : lo + step]:
            r = rows[i]
            src = Path(audio_root, r["source_path"]) if audio_root is not None else Path(r["source_path"])
            try:
                waves.append(read_segment_audio(src, r["start_s"], r["end_s"]))
            except BadAudioError as err:
                log.warning("k-means sample: skipped %s: %s", r["segment_id"], err)
        feats += [f for f in extractor.features(waves) if len(f)]
        n_collected = sum(len(f) for f in feats)
        if n_collected >= cfg.kmeans_sample_frames:
            break
    x = np.concatenate(feats) if feats else np.zeros((0, extractor.encoder.config.hidden_size), np.float32)
    if len(x) > cfg.kmeans_sample_frames:
        x = x[np.sort(rng.choice(len(x), cfg.kmeans_sample_frames, replace=False))]
    log.info("fitting k-means: %d units on %d frames (dim %d)", cfg.n_units, len(x), x.shape[1])
    centroids = fit_kmeans(x, cfg.n_units, cfg.kmeans_iters, seed)
    return save_centroids(centroids, Path(out_path))
