"""What a units shard must hold before it is committed: unit ids in [0, n_units), durations >= 1, frame counts
that equal the durations' sum. A shard that breaks these is never written or recorded, so a language model
never trains on an id its vocabulary lacks (an id of 65535 from NaN features, say)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class InvalidUnitsError(RuntimeError):
    """A unit shard about to be committed holds ids outside the vocabulary or non-positive durations."""


def item_units_problem(units: np.ndarray, durations: np.ndarray, n_units: int) -> str | None:
    """Why one item's (units, durations) must not be written, or None when they are valid."""
    if units.size != durations.size:
        return f"{units.size} units but {durations.size} durations"
    if units.size and (int(units.min()) < 0 or int(units.max()) >= n_units):
        return f"unit ids {int(units.min())}..{int(units.max())} outside [0, {n_units})"
    if durations.size and int(durations.min()) < 1:
        return f"duration {int(durations.min())} < 1 frame"
    return None


def check_unit_table(table: pa.Table, n_units: int, where: str) -> None:
    """InvalidUnitsError unless every `*units` list column is in [0, n_units) and every `*durations` one >= 1."""
    for name in table.column_names:
        if not name.endswith(("units", "durations")) or not pa.types.is_list(table.schema.field(name).type):
            continue
        flat = pc.list_flatten(table[name])
        if len(flat) == 0:
            continue
        low, high = pc.min_max(flat).values()
        low, high = low.as_py(), high.as_py()
        if name.endswith("units") and (low < 0 or high >= n_units):
            raise InvalidUnitsError(f"{where}: column {name} holds unit ids {low}..{high} outside [0, {n_units}); "
                                    f"the shard was not written")
        if name.endswith("durations") and low < 1:
            raise InvalidUnitsError(f"{where}: column {name} holds a duration of {low} frames; the shard was not "
                                    f"written")
