"""data_catalog: the DuckDB record of artifacts, quarantined inputs and evaluation results."""

from data_catalog.catalog import Artifact, Catalog

__all__ = ["Artifact", "Catalog"]
