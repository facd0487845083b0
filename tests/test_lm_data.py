"""Packed loader: layout, split, determinism, mixing, exact resume, and packed == per-document forward."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from slam_core.lm.data import (IGNORE_INDEX, BadShardError, DataSource, PackedLoader, PrefetchingLoader,
                               is_validation_doc, sources_from_paths)
from slam_core.lm.step import packed_loss_sum
from slam_core.lm.vocab import encode_units
from slam_core.schemas import UNITS


def write_shard(path: Path, docs: dict[str, list[int] | None], row_group_size: int = 7) -> Path:
    rows = [{"segment_id": k, "dataset": path.parent.parent.name, "split": "train", "units": v,
             "durations": None if v is None else [1] * len(v), "n_frames": len(v or []),
             "audio_seconds": 0.04 * len(v or [])} for k, v in docs.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=UNITS), path, row_group_size=row_group_size)
    return path


def random_docs(prefix: str, n: int, seed: int, lo: int = 1, hi: int = 60) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    return {f"{prefix}-{i:04d}": rng.integers(0, 500, rng.integers(lo, hi)).tolist() for i in range(n)}


def segments(batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Split the flattened buffer at position_ids == 0 (segment starts; an example may cross a row boundary)."""
    ids, pos = batch["input_ids"].reshape(-1).numpy(), batch["position_ids"].reshape(-1).numpy()
    starts = list(np.flatnonzero(pos == 0)) + [len(pos)]
    return [ids[a:b] for a, b in zip(starts[:-1], starts[1:])]


def chunks(tokens: np.ndarray, context_len: int) -> list[tuple[int, ...]]:
    """SlamKit's chunk_texts: consecutive context_len pieces, the remainder kept."""
    return [tuple(tokens[i:i + context_len]) for i in range(0, len(tokens), context_len)]


def test_buffers_hold_whole_examples_cut_only_at_multiples_of_the_context(tmp_path):
    docs = random_docs("a", 40, seed=0, hi=150)  # some longer than the context: they are cut into chunks
    shard = write_shard(tmp_path / "units" / "a" / "train" / "units-00000.parquet", docs)
    loader = PackedLoader([DataSource("a", [shard])], context_len=64, micro_batch_size=3, seed=1, split="val",
                          val_fraction=0.999999)
    seen, n_buffers, n_real = [], 0, 0
    for batch in loader:
        assert batch["input_ids"].shape == (3, 64) and "attention_mask" not in batch
        pos, labels, ids = (batch[k].reshape(-1) for k in ("position_ids", "labels", "input_ids"))
        assert torch.equal(labels == IGNORE_INDEX, (pos == 0) | (ids == 0))  # -100 exactly at example starts / pad
        assert int(pos.max()) < 64
        n_buffers += 1
        n_real += int((ids != 0).sum())
        seen.extend(tuple(int(t) for t in seg) for seg in segments(batch) if seg[0] != 0)
    expected = [c for u in docs.values() for c in chunks(encode_units(u), 64)]
    assert sorted(seen) == sorted(expected)  # every example once, whole, in shuffled order
    assert n_real == sum(len(encode_units(u)) for u in docs.values())
    assert n_buffers <= -(-n_real // 64 // 3) + 16  # greedy filling wastes at most one example's room per buffer


def test_short_documents_are_never_split_and_long_ones_only_at_context_multiples(tmp_path):
    docs = {"short": list(range(60)), "exact": list(range(62)), "long": list(range(150))}  # 62, 64, 152 tokens
    shard = write_shard(tmp_path / "u" / "a" / "train" / "s.parquet", docs)
    loader = PackedLoader([DataSource("a", [shard])], 64, 2, seed=0, split="val", val_fraction=0.999999)
    lengths = sorted(len(seg) for batch in loader for seg in segments(batch) if seg[0] != 0)
    assert lengths == [24, 62, 64, 64, 64]  # 152 = 64 + 64 + 24 (SlamKit chunk_texts), the rest whole


def test_train_val_split_by_hash(tmp_path):
    docs = random_docs("d", 400, seed=1)
    shard = write_shard(tmp_path / "u" / "d" / "train" / "s.parquet", docs, row_group_size=50)
    val_ids = {k for k in docs if is_validation_doc(k, 0.1)}
    assert 20 <= len(val_ids) <= 65
    loader = PackedLoader([DataSource("d", [shard])], 32, 4, seed=0, split="val", val_fraction=0.1)
    n_val_tokens = sum(int((b["input_ids"] != 0).sum()) for b in loader)
    assert n_val_tokens == sum(len(docs[k]) + 2 for k in val_ids)
    train = PackedLoader([DataSource("d", [shard])], 64, 4, seed=0, split="train", val_fraction=0.1)  # no chunks
    val_set = {tuple(encode_units(docs[k])) for k in val_ids}
    seen = {tuple(train._next_example()) for _ in range(400 - len(val_ids))}  # one epoch of train docs
    assert not (seen & val_set) and len(seen) == 400 - len(val_ids)


def test_deterministic_shuffle_and_resume(tmp_path):
    shard = write_shard(tmp_path / "u" / "a" / "train" / "s.parquet", random_docs("a", 60, seed=2))
    src = [DataSource("a", [shard])]

    def take(loader, n):
        return [loader.next_batch() for _ in range(n)]

    a, b = PackedLoader(src, 48, 2, seed=5), PackedLoader(src, 48, 2, seed=5)
    first_a, first_b = take(a, 30), take(b, 30)  # > 1 epoch
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(first_a, first_b))
    other = take(PackedLoader(src, 48, 2, seed=6), 3)
    assert not torch.equal(other[0]["input_ids"], first_a[0]["input_ids"])

    loader = PackedLoader(src, 48, 2, seed=5)
    take(loader, 13)
    torch.save(loader.state_dict(), tmp_path / "state.pt")
    rest = take(loader, 17)
    resumed = PackedLoader(src, 48, 2, seed=5)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for x, y in zip(rest, take(resumed, 17)):
        for key in x:
            assert torch.equal(x[key], y[key])


def test_mixing_follows_weights(tmp_path):
    a = write_shard(tmp_path / "units" / "big" / "train" / "s.parquet", {f"a{i}": [1, 2] for i in range(50)})
    b = write_shard(tmp_path / "units" / "small" / "train" / "s.parquet", {f"b{i}": [3] for i in range(50)})
    sources = sources_from_paths([a, b], weights={"big": 3.0, "small": 1.0})
    assert [s.name for s in sources] == ["big", "small"]
    loader = PackedLoader(sources, 64, 1, seed=0)
    docs = [loader._next_example() for _ in range(2000)]
    frac_big = np.mean([len(d) == 4 for d in docs])
    assert 0.72 < frac_big < 0.78


def test_default_mix_weights_sets_by_examples_and_weights_must_name_every_set(tmp_path):
    """Unset train.dataset_weights: each set is drawn in proportion to its examples (a uniform shuffle of the
    union, as SlamKit's interleave_datasets with size-proportional ratios), so all sets run out together."""
    a = write_shard(tmp_path / "units" / "big" / "train" / "s.parquet", {f"a{i}": [1, 2] for i in range(300)})
    b = write_shard(tmp_path / "units" / "small" / "train" / "s.parquet", {f"b{i}": [3] for i in range(100)})
    sources = sources_from_paths([a, b])
    assert [(s.name, s.weight) for s in sources] == [("big", None), ("small", None)]
    loader = PackedLoader(sources, 64, 1, seed=0)
    assert loader.mix == {"big": 0.75, "small": 0.25}
    docs = [loader._next_example() for _ in range(400)]  # one pass' worth of examples
    assert 0.70 < np.mean([len(d) == 4 for d in docs]) < 0.80
    with pytest.raises(ValueError, match="train.dataset_weights: no weight for dataset.*small"):
        sources_from_paths([a, b], weights={"big": 1.0})


def test_bad_rows_skipped_and_bad_shard_named(tmp_path):
    shard = write_shard(tmp_path / "u" / "a" / "train" / "s.parquet", {"x": [4, 5], "y": None, "z": [], "w": [7]})
    loader = PackedLoader([DataSource("a", [shard])], 16, 1, seed=0, split="val", val_fraction=0.999999)
    list(loader)
    assert loader.skipped_docs == 2
    assert [item for item, _, _ in loader.skipped_items()] == ["y", "z"]
    small_vocab = PackedLoader([DataSource("a", [shard])], 16, 1, seed=0, split="val", val_fraction=0.999999,
                               vocab_size=8)  # unit 7 -> token 9 does not fit
    list(small_vocab)
    assert ("w", "unit_out_of_range") in [(item, reason) for item, reason, _ in small_vocab.skipped_items()]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"segment_id": ["a"]}), bad)
    with pytest.raises(BadShardError, match="bad.parquet.*units"):
        PackedLoader([DataSource("a", [bad])], 16, 1, seed=0)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(BadShardError, match="junk.parquet"):
        PackedLoader([DataSource("a", [junk])], 16, 1, seed=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "packed_sdpa", "packed_flex"])
def test_packed_forward_equals_per_example_forward(tmp_path, attn):
    """The loss over a buffer equals the loss of every example run alone: with examples running across row
    boundaries (flex sees the flattened buffer), or kept inside rows for the paths that mask row by row."""
    from slam_core.lm.attention import needs_whole_rows, register_packed_attention

    register_packed_attention()
    docs = random_docs("p", 12, seed=3, lo=3, hi=40)
    shard = write_shard(tmp_path / "u" / "p" / "train" / "s.parquet", docs)
    whole_rows = needs_whole_rows(attn)
    batch = PackedLoader([DataSource("p", [shard])], 48, 3, seed=0, whole_rows=whole_rows).next_batch()
    starts_of_rows = batch["position_ids"][:, 0]
    assert (starts_of_rows != 0).any() != whole_rows  # an example continues in the next row only when allowed
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=502, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_cache=False, attn_implementation=attn)
    model = Qwen2ForCausalLM(config).eval()
    alone_model = Qwen2ForCausalLM(Qwen2Config(**{**config.to_dict(), "attn_implementation": "sdpa"})).eval()
    alone_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        loss_sum, n_targets = packed_loss_sum(model, batch, attn)
        doc_loss_sum, doc_tokens = 0.0, 0
        for seg in segments(batch):
            if seg[0] == 0 or len(seg) < 2:
                continue
            ids = torch.from_numpy(seg)[None]
            alone = alone_model(input_ids=ids).logits
            doc_loss_sum += float(F.cross_entropy(alone[0, :-1], ids[0, 1:], reduction="sum"))
            doc_tokens += len(seg) - 1
    assert int(n_targets) == doc_tokens
    assert abs(float(loss_sum) / n_targets - doc_loss_sum / doc_tokens) < 1e-5


def test_source_without_train_documents_fails_clearly(tmp_path):
    shard = write_shard(tmp_path / "u" / "a" / "train" / "s.parquet", {"x": [4, 5], "y": [6]})
    with pytest.raises(ValueError, match="no usable 'train' documents"):
        PackedLoader([DataSource("a", [shard])], 16, 1, seed=0, split="train", val_fraction=0.999999)


def test_prefetching_loader_matches_plain_loader_and_resumes(tmp_path):
    shard = write_shard(tmp_path / "u" / "a" / "train" / "s.parquet", random_docs("a", 40, seed=4))
    src = [DataSource("a", [shard])]
    plain = PackedLoader(src, 32, 2, seed=9)
    expected = [plain.next_batch() for _ in range(12)]
    prefetching = PrefetchingLoader(PackedLoader(src, 32, 2, seed=9), depth=3)
    try:
        got = [prefetching.next_batch() for _ in range(5)]
        state = prefetching.state_dict()  # position after the 5 batches handed out, not after the prefetched ones
    finally:
        prefetching.close()
    resumed = PackedLoader(src, 32, 2, seed=9)
    resumed.load_state_dict(state)
    got += [resumed.next_batch() for _ in range(7)]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
               for a, b in zip(expected, got))


def test_prefetching_loader_reraises_errors(tmp_path):
    shard = write_shard(tmp_path / "u" / "a" / "train" / "s.parquet", {"x": [4, 5]})
    loader = PackedLoader([DataSource("a", [shard])], 16, 1, seed=0)

    def broken(n_examples):
        raise BadShardError("units-00003.parquet: cannot read row group 0")

    loader.next_step = broken
    prefetching = PrefetchingLoader(loader, examples_per_step=4)
    with pytest.raises(BadShardError, match="units-00003"):
        prefetching.next_step(4)
    prefetching.close()
