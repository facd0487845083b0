"""data_catalog: the DuckDB record of artifacts, quarantined inputs and evaluation results."""

from data_catalog.catalog import Artifact, Catalog, read_only_totals
from data_catalog.stage import produce_or_reuse

__all__ = ["Artifact", "Catalog", "produce_or_reuse", "read_only_totals"]
