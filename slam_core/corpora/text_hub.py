"""Text corpora from the Hugging Face Hub: TinyStories -> STORIES, SWAG gold rows -> TRIPLES (lhotse-style
`download_*` / `prepare_*` pairs).

- TinyStories (`roneneldan/TinyStories`): `data/*.parquet` with a `text` column, or the `*.txt` release files
  (stories separated by `<|endoftext|>`). Train files -> split 'train', validation files -> 'heldout'.
  TinyStories has no topics: each story is its own topic, so a tSC-like negative ending comes from another story.
- SWAG (`allenai/swag`, 'regular' config): gold rows only (`gold-source == 'gold'`, a label in 0..3).
  prompt = sent1; chosen = sent2 + ' ' + ending[label]; rejected = sent2 + ' ' + one wrong ending drawn with
  a seed derived from (seed, pair id), so a row's pair does not depend on file order. Repetition filter as in
  SlamKit's `config/data/preference_alignment_data.yaml` (docs/published-artifacts.md): keep a row iff the
  bigram auto-BLEU of `prompt + ' ' + chosen` is below `swag_max_auto_bleu` (0.3); dropped rows are counted
  ('repetitive').
  SWAG train -> 'train' (DPO), validation -> 'heldout' (sSC-like eval); the unlabelled test split is skipped.

A revision of None downloads the default branch and logs it as unpinned (hub.fetch_hub_dataset then records
the commit it got); `*_local_dir` reads a local copy in hub layout and never touches the network. Offline, the
fetch fails with one HubUnavailableError naming the repo and the local-dir way out.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from slam_core.config import CorpusConfig
from slam_core.corpora.builtin import write_parquet_atomic
from slam_core.corpora.hub import HubUnavailableError, fetch_hub_dataset
from slam_core.errors import InputError
from slam_core.schemas import STORIES, TRIPLES
from slam_core.synth.text_norm import normalise_text, split_sentences

log = logging.getLogger(__name__)

SWAG_COLUMNS = ("video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
                "ending0", "ending1", "ending2", "ending3", "label")
_STORY_SEPARATOR = "<|endoftext|>"


def split_of(path: Path) -> str | None:
    """'train', 'heldout' or None (test / unknown) from a hub file name."""
    name = path.name.lower()
    if "train" in name:
        return "train"
    if re.search(r"valid|(^|[^a-z])val([^a-z]|$)|dev", name):
        return "heldout"
    return None


def _download(repo_id: str, revision: str | None, dest_dir: Path, allow_patterns: list[str]) -> Path:
    """A hub snapshot through the shared fetcher (pinning, clear offline error naming the repo)."""
    if revision is None:
        log.warning("%s: no pinned revision configured, using the default branch", repo_id)
    try:
        return fetch_hub_dataset(repo_id, dest_dir, revision=revision, allow_patterns=allow_patterns)
    except HubUnavailableError as err:
        raise HubUnavailableError(f"{err} For the text corpus that is corpus.tinystories_local_dir / "
                                  "corpus.swag_local_dir (or `slam synth ... --input DIR`).") from None


def _local_files(root: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (expected a hub-layout copy of {what})")
    files = sorted(p for p in root.rglob("*") if p.suffix in suffixes and ".cache" not in p.parts)
    if not files:
        raise FileNotFoundError(f"{root}: no {' or '.join(suffixes)} files of {what} found")
    return files


# ---------------------------------------------------------------- TinyStories


def download_tinystories(dest_dir: str | Path, repo_id: str = "roneneldan/TinyStories", revision: str | None = None,
                         local_dir: str | Path | None = None) -> Path:
    """A directory with TinyStories' parquet (or txt) files: `local_dir` as given, else a hub snapshot."""
    if local_dir is not None:
        _local_files(Path(local_dir), (".parquet", ".txt"), repo_id)
        return Path(local_dir)
    return _download(repo_id, revision, Path(dest_dir), ["data/*.parquet", "*.parquet"])


def tinystories_files(root: str | Path) -> list[Path]:
    """Parquet shards if present, else the txt files (the original release, not the GPT-4-only V2 files
    when both exist); only train/validation files. A single file is taken as it is."""
    if Path(root).is_file():
        return [Path(root)]
    files = _local_files(Path(root), (".parquet", ".txt"), "TinyStories")
    parquet = [f for f in files if f.suffix == ".parquet"]
    if parquet:
        return [f for f in parquet if split_of(f)]
    txt = [f for f in files if split_of(f)]
    v1 = [f for f in txt if "v2" not in f.name.lower()]
    return v1 or txt


def _read_stories(path: Path) -> Iterator[str]:
    if path.suffix == ".parquet":
        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise ValueError(f"{path}: no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
        for batch in pf.iter_batches(batch_size=4096, columns=["text"]):
            yield from (t for t in batch.column(0).to_pylist() if t is not None)
    else:
        with open(path, encoding="utf-8", errors="replace") as fh:
            buf: list[str] = []
            for line in fh:
                if line.strip() == _STORY_SEPARATOR:
                    yield "".join(buf)
                    buf = []
                else:
                    buf.append(line)
            if "".join(buf).strip():
                yield "".join(buf)


def prepare_tinystories(root: str | Path, out_path: str | Path, max_rows: int | None = None) -> dict:
    """STORIES rows from a TinyStories directory (file order, at most `max_rows` per split). Stories that
    normalise to fewer than two sentences are skipped and counted (tSC needs a prompt and an ending)."""
    rows: list[dict] = []
    counts: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    unreadable: dict[str, str] = {}
    files = tinystories_files(root)
    for path in files:
        split = split_of(path) or "train"
        kept_rows, kept_counts, kept_skipped = len(rows), counts.copy(), skipped.copy()
        try:
            for text in _read_stories(path):
                if max_rows is not None and counts[split] >= max_rows:
                    break
                sentences = split_sentences(normalise_text(text).text)
                if len(sentences) < 2:
                    skipped["fewer_than_two_sentences"] += 1
                    continue
                story_id = f"tinystories-{split}-{counts[split]:07d}"
                counts[split] += 1
                rows.append({"story_id": story_id, "topic": story_id, "split": split, "sentences": sentences})
        except (ValueError, OSError) as err:  # a corrupt Parquet, a missing 'text' column: this file only
            reason = " ".join(str(err).split())[:300]
            if split == "train" or len(files) == 1:
                raise InputError(f"unreadable TinyStories {split} file ({reason})", path,
                                 "replace it with the published file (roneneldan/TinyStories)") from None
            log.warning("TinyStories: skipping the %s file %s (%s); the train split goes on", split, path, reason)
            del rows[kept_rows:]
            counts, skipped, unreadable[str(path)] = kept_counts, kept_skipped, reason
    path = write_parquet_atomic(rows, STORIES, Path(out_path))
    log.info("TinyStories: %s stories, skipped %s", dict(counts), dict(skipped))
    return {"path": str(path), "rows": len(rows), "per_split": dict(counts), "skipped": dict(skipped),
            "unreadable": unreadable}


# ---------------------------------------------------------------- SWAG


def download_swag(dest_dir: str | Path, repo_id: str = "allenai/swag", revision: str | None = None,
                  local_dir: str | Path | None = None) -> Path:
    """A directory with SWAG's 'regular' files: `local_dir` as given, else a hub snapshot of regular/*."""
    if local_dir is not None:
        _local_files(Path(local_dir), (".parquet", ".csv"), repo_id)
        return Path(local_dir)
    return _download(repo_id, revision, Path(dest_dir), ["regular/*"])


def swag_files(root: str | Path) -> list[Path]:
    """The 'regular' config's train/validation files (parquet, else csv); a single file (the official
    `train.csv` / `val.csv` of rowanz/swagaf, or a hub Parquet) is used as given."""
    if Path(root).is_file():
        if Path(root).suffix not in (".csv", ".parquet"):
            raise ValueError(f"{root}: a SWAG file must be .csv (rowanz/swagaf train.csv/val.csv) or .parquet")
        return [Path(root)]
    files = _local_files(Path(root), (".parquet", ".csv"), "SWAG")
    regular = [f for f in files if "full" not in f.relative_to(root).parts] or files
    chosen = [f for f in regular if f.suffix == ".parquet"] or regular
    return [f for f in chosen if split_of(f)]


def _read_swag(path: Path) -> tuple[list[dict], list[dict]]:
    """(rows, rows refused): a CSV whose bytes are not all UTF-8 is read record by record, and each record with
    bytes that are not UTF-8 (e.g. one row saved as Latin-1) is refused with its line number; the others go on."""
    bad: list[dict] = []
    if path.suffix == ".parquet":
        table = pq.read_table(path)
    else:
        table = pa_csv.read_csv(path)
        # pyarrow types a text column holding bytes that are not UTF-8 as binary: every row would be dropped
        if any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in table.schema):
            return _read_swag_csv_by_record(path)
    missing = [c for c in SWAG_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not SWAG 'regular' rows, missing {missing} (columns: {table.column_names})")
    return table.select(list(SWAG_COLUMNS)).to_pylist(), bad


def _read_swag_csv_by_record(path: Path) -> tuple[list[dict], list[dict]]:
    """The slow path of `_read_swag` for a CSV with bytes that are not UTF-8 (see there)."""
    import csv

    rows, bad = [], []
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        missing = [c for c in SWAG_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: not SWAG 'regular' rows, missing {missing} (columns: {header})")
        line = reader.line_num
        for record in reader:
            first, line = line + 1, reader.line_num
            try:
                "".join(record).encode("utf-8")
            except UnicodeEncodeError as err:
                raw = err.object[err.start:err.end].encode("utf-8", "surrogateescape")
                bad.append({"path": f"{path}:{first}", "reason": "not_utf8",
                            "detail": f"line {first}: bytes {raw!r} are not UTF-8 (saved in another encoding?)"})
                continue
            rows.append(dict(zip(header, record)))
    return [{c: r.get(c) for c in SWAG_COLUMNS} for r in rows], bad


def swag_triple(row: dict, pair_id: str, split: str, seed: int) -> dict | None:
    """The TRIPLES row of one SWAG row, or None when it is not a labelled gold row."""
    label = swag_label(row.get("label"))
    if row.get("gold-source") != "gold" or label is None:
        return None
    endings = [row[f"ending{i}"] for i in range(4)]
    if not all(isinstance(t, str) for t in (row["sent1"], row["sent2"], *endings)):
        return None
    wrong = [e for i, e in enumerate(endings) if i != label]
    rejected = random.Random(f"swag-{seed}-{pair_id}").choice(wrong)
    return {"pair_id": pair_id, "split": split, "prompt_text": row["sent1"].strip(),
            "chosen_text": f"{row['sent2'].strip()} {endings[label].strip()}",
            "rejected_text": f"{row['sent2'].strip()} {rejected.strip()}"}


def swag_label(value: object) -> int | None:
    """The gold ending 0-3 of a SWAG row, or None for a missing, non-numeric or out-of-range label ("2" and 2.0
    are fine: CSV readers type the column differently)."""
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() and 0 <= number <= 3 else None


REPETITIVE = "repetitive"  # why a pair is dropped by the repetition filter (a count, a quarantine reason)
AUTO_BLEU_N = 2  # SlamKit's auto_bleu_n


def repetition_score(prompt_text: str, chosen_text: str) -> float:
    """SlamKit's repetition-filter score of a pair (`get_repetition_filter_fn`): the bigram auto-BLEU of
    `prompt_text + " " + chosen_text`; the pair is kept iff it is below the threshold."""
    from slam_core.eval.text_metrics import auto_bleu

    return auto_bleu(f"{prompt_text} {chosen_text}", AUTO_BLEU_N)


def build_swag_triples(rows: list[dict], split: str, seed: int, max_auto_bleu: float = 0.3,
                       max_rows: int | None = None) -> tuple[list[dict], Counter[str]]:
    """TRIPLES of the gold rows that pass the repetition filter, and counts of dropped rows by reason."""
    triples: list[dict] = []
    dropped: Counter[str] = Counter()
    for index, row in enumerate(rows):
        if max_rows is not None and len(triples) >= max_rows:
            break
        triple = swag_triple(row, f"swag-{split}-{index:06d}", split, seed)
        if triple is None:
            dropped["not_gold" if row.get("gold-source") != "gold" else "bad_label_or_text"] += 1
        elif repetition_score(triple["prompt_text"], triple["chosen_text"]) >= max_auto_bleu:
            dropped[REPETITIVE] += 1
        else:
            triples.append(triple)
    return triples, dropped


def prepare_swag(root: str | Path, out_path: str | Path, seed: int, max_auto_bleu: float = 0.3,
                 max_rows: int | None = None) -> dict:
    """TRIPLES Parquet from a SWAG directory or file; returns rows per split and dropped counts."""
    triples: list[dict] = []
    dropped: Counter[str] = Counter()
    per_split: Counter[str] = Counter()
    by_split: dict[str, list[dict]] = {}
    unreadable: dict[str, str] = {}
    quarantined: list[dict] = []  # rows refused, each {"path": "<file>:<line>", "reason", "detail"}
    files = swag_files(root)
    for path in files:
        split = split_of(path) or "train"  # a single file whose name says no split (e.g. swag.csv) is training data
        try:
            rows, bad = _read_swag(path)
        except (ValueError, OSError) as err:  # empty, not CSV/Parquet, a column missing
            reason = " ".join(str(err).split())[:300]
            if split == "train" or len(files) == 1:
                raise InputError(f"unreadable SWAG {split} file ({reason})", path,
                                 "replace it with the official file (rowanz/swagaf or allenai/swag)") from None
            log.warning("SWAG: skipping the %s file %s (%s); the train split goes on", split, path, reason)
            unreadable[str(path)] = reason
            continue
        for row in bad:
            log.warning("SWAG: quarantined %s (%s); the other rows go on", row["path"], row["detail"])
        quarantined += bad
        by_split.setdefault(split, []).extend(rows)
    for split in sorted(by_split):
        rows, drop = build_swag_triples(by_split[split], split, seed, max_auto_bleu, max_rows)
        triples += rows
        dropped += drop
        per_split[split] = len(rows)
    path = write_parquet_atomic(triples, TRIPLES, Path(out_path))
    log.info("SWAG: %s triples, dropped %s", dict(per_split), dict(dropped))
    return {"path": str(path), "rows": len(triples), "per_split": dict(per_split), "dropped": dict(dropped),
            "unreadable": unreadable, "quarantined": quarantined}


def prepare_text_corpus(cfg: CorpusConfig, seed: int, out_dir: str | Path, download_dir: str | Path) -> dict:
    """stories.parquet (TinyStories) and triples.parquet (SWAG) under `out_dir`, like the built-in corpus."""
    out_dir, download_dir = Path(out_dir), Path(download_dir)
    ts_root = download_tinystories(download_dir / "tinystories", cfg.tinystories_hub_id, cfg.tinystories_revision,
                                   cfg.tinystories_local_dir)
    swag_root = download_swag(download_dir / "swag", cfg.swag_hub_id, cfg.swag_revision, cfg.swag_local_dir)
    stories = prepare_tinystories(ts_root, out_dir / "stories.parquet", cfg.max_hub_rows)
    triples = prepare_swag(swag_root, out_dir / "triples.parquet", seed, cfg.swag_max_auto_bleu, cfg.max_hub_rows)
    return {"stories": stories["path"], "triples": triples["path"], "n_stories": stories["rows"],
            "n_triples": triples["rows"], "skipped_stories": stories["skipped"], "dropped_triples": triples["dropped"],
            "quarantined": triples["quarantined"]}
