"""Text corpora: `prepare_<name>()` functions that write STORIES / TRIPLES Parquet files.

builtin: a seeded generator standing in for TinyStories + SWAG (offline). A TinyStories/SWAG module
(`download_tinystories` / `prepare_tinystories`) writes the same schemas.
"""

from slam_core.corpora.builtin import generate_stories, generate_triples, prepare_builtin_corpus

__all__ = ["generate_stories", "generate_triples", "prepare_builtin_corpus"]
