"""Word-alignment counts in the catalog: per alignment shard, its transcript words and how many of them are aligned.

The shard itself is an ordinary artifact (stage "alignments": rows = segments, tokens = aligned words); this table
adds the denominator, so the share of words aligned can be read per dataset and split. A row belongs to one
artifact (path, fingerprint) and is only counted while that artifact is recorded.
"""

from __future__ import annotations

from typing import Any

from data_catalog.catalog import Catalog

STAGE = "alignments"
SCHEMA = """
CREATE TABLE IF NOT EXISTS word_alignments (
    path VARCHAR NOT NULL,
    fingerprint VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    segments BIGINT,
    words BIGINT,
    aligned BIGINT,
    PRIMARY KEY (path, fingerprint)
);
"""


def record_alignment_counts(catalog: Catalog, *, path: str, fingerprint: str, dataset: str, split: str, source: str,
                            segments: int, words: int, aligned: int) -> None:
    """Record (or replace) the counts of one alignment shard."""
    with catalog.connect() as con:
        con.execute(SCHEMA)
        con.execute("INSERT OR REPLACE INTO word_alignments VALUES (?,?,?,?,?,?,?,?)",
                    [str(path), fingerprint, dataset, split, source, segments, words, aligned])


def has_alignment_counts(catalog: Catalog, path: str, fingerprint: str) -> bool:
    with catalog.connect() as con:
        con.execute(SCHEMA)
        return con.execute("SELECT count(*) FROM word_alignments WHERE path = ? AND fingerprint = ?",
                           [str(path), fingerprint]).fetchone()[0] > 0


def alignment_shares(catalog: Catalog) -> list[dict[str, Any]]:
    """Per (dataset, split, source): shards, segments, words, aligned words and the share aligned, counting only
    shards whose artifact row is still recorded."""
    with catalog.connect() as con:
        con.execute(SCHEMA)
        cur = con.execute(
            """SELECT w.dataset, w.split, w.source, count(*) AS shards, sum(w.segments) AS segments,
                      sum(w.words) AS words, sum(w.aligned) AS aligned,
                      round(sum(w.aligned) / nullif(sum(w.words), 0), 4) AS share_aligned
               FROM word_alignments w JOIN artifacts a ON a.path = w.path AND a.fingerprint = w.fingerprint
               GROUP BY w.dataset, w.split, w.source ORDER BY w.dataset, w.split, w.source""")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
