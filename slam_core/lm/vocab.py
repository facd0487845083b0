"""The 502-token speech vocabulary shared with SlamKit: PAD 0, BOS = EOS 1, unit k -> id k + 2."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 1
UNIT_OFFSET = 2


def vocab_size(n_units: int) -> int:
    return n_units + UNIT_OFFSET


def encode_units(units: Sequence[int] | np.ndarray, add_bos: bool = True, add_eos: bool = True) -> np.ndarray:
    """Unit ids -> token ids `[1, u+2, ..., 1]` as int64."""
    body = np.asarray(units, dtype=np.int64) + UNIT_OFFSET
    parts = ([np.array([BOS_ID])] if add_bos else []) + [body] + ([np.array([EOS_ID])] if add_eos else [])
    return np.concatenate(parts).astype(np.int64)


def decode_ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Token ids -> unit ids, dropping PAD/BOS/EOS."""
    ids = np.asarray(ids, dtype=np.int64)
    return (ids[ids >= UNIT_OFFSET] - UNIT_OFFSET).astype(np.int64)
