"""An optimiser step is SlamKit's: a fixed number of examples packed whole into token buffers, globally shuffled,
split over data-parallel ranks with aligned micro-batch counts, resumable exactly."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from slam_core.lm.data import IGNORE_INDEX, DataSource, PackedLoader, PrefetchingLoader, sources_from_paths
from test_lm_data import random_docs, segments, write_shard


def _examples(step) -> list[tuple[int, ...]]:
    return sorted(tuple(int(t) for t in seg) for b in step.batches for seg in segments(b) if seg[0] != 0)


def test_a_step_holds_exactly_its_examples_whole_and_counts_its_targets(tmp_path):
    shard = write_shard(tmp_path / "u" / "a" / "train" / "s.parquet", random_docs("a", 300, seed=0, lo=20, hi=200))
    loader = PackedLoader([DataSource("a", [shard])], 128, 4, seed=0)
    for _ in range(5):
        step = loader.next_step(32)
        assert step.n_examples == 32 and len(_examples(step)) == 32
        assert all(b["input_ids"].shape == (4, 128) for b in step.batches)
        labels = torch.cat([b["labels"].reshape(-1)[1:] for b in step.batches])
        assert int((labels != IGNORE_INDEX).sum()) == step.n_targets == step.n_tokens - 32
        real = sum(int((b["input_ids"] != 0).sum()) for b in step.batches)
        assert real == step.n_tokens
        # first-fit decreasing: no two buffers could have been merged
        used = sorted(int((b["input_ids"] != 0).sum()) for b in step.batches)
        assert len(used) == 1 or used[0] + used[1] > 512
        assert len(step.batches) <= 8  # a buffer of 4 rows always holds >= 4 examples of <= 128 tokens


def test_steps_equal_the_paper_recipe_shape(tmp_path):
    """128 examples a step (8 per device x 16 accumulation), however many buffers the packing needs."""
    shard = write_shard(tmp_path / "u" / "a" / "train" / "s.parquet", random_docs("a", 400, seed=1, lo=10, hi=90))
    loader = PackedLoader([DataSource("a", [shard])], 64, 8, seed=0)
    step = loader.next_step(8 * 16)
    assert step.n_examples == 128 and len(step.batches) <= 16 and step.n_buffers == len(step.batches)


def test_ranks_split_a_step_with_aligned_micro_batch_counts(tmp_path):
    shard = write_shard(tmp_path / "u" / "a" / "train" / "s.parquet", random_docs("a", 200, seed=2, lo=5, hi=120))
    sources = [DataSource("a", [shard])]
    whole = PackedLoader(sources, 64, 2, seed=3)
    ranks = [PackedLoader(sources, 64, 2, seed=3, rank=r, world_size=3) for r in range(3)]
    for _ in range(4):
        ref = whole.next_step(40)
        parts = [loader.next_step(40) for loader in ranks]
        assert len({len(p.batches) for p in parts}) == 1  # the same number of micro-steps on every rank
        assert sorted(sum((_examples(p) for p in parts), [])) == _examples(ref)
        assert all((p.n_tokens, p.n_targets, p.n_buffers) == (ref.n_tokens, ref.n_targets, ref.n_buffers)
                   for p in parts)
    assert all(loader.state_dict()["n_drawn"] == whole.state_dict()["n_drawn"] for loader in ranks)


def test_global_shuffle_draws_consecutive_steps_from_many_shards(tmp_path):
    """Twenty path-sorted shards of one 'book' each: a row-group-local shuffle would draw a step from one or two
    of them; the global shuffle spreads every step over most of them."""
    shards = []
    for s in range(20):
        docs = {f"book{s:02d}-{i:03d}": [s] * (10 + i % 7) for i in range(60)}  # a shard's units name its book
        shards.append(write_shard(tmp_path / "units" / "librilight" / "train" / f"units-{s:05d}.parquet", docs,
                                  row_group_size=64))
    loader = PackedLoader(sources_from_paths(shards), 64, 4, seed=0)
    for _ in range(6):
        step = loader.next_step(32)
        books = {int(seg[1]) - 2 for b in step.batches for seg in segments(b) if seg[0] != 0}
        assert len(books) >= 12


def test_shuffle_is_exact_across_resume_and_prefetch(tmp_path):
    shard = write_shard(tmp_path / "u" / "a" / "train" / "s.parquet", random_docs("a", 50, seed=4, lo=5, hi=100))
    other = write_shard(tmp_path / "u" / "b" / "train" / "s.parquet", random_docs("b", 30, seed=5, lo=5, hi=100))
    src = sources_from_paths([shard, other])
    plain = PackedLoader(src, 64, 2, seed=9)
    expected = [plain.next_step(16) for _ in range(12)]  # > 1 epoch of both sets
    prefetching = PrefetchingLoader(PackedLoader(src, 64, 2, seed=9), depth=3, examples_per_step=16)
    try:
        got = [prefetching.next_step(16) for _ in range(5)]
        state = prefetching.state_dict()
    finally:
        prefetching.close()
    resumed = PackedLoader(src, 64, 4, seed=9)  # another micro-batch (GPU) resumes on the same examples
    resumed.load_state_dict(state)
    got += [resumed.next_step(16) for _ in range(7)]
    assert [_examples(a) for a in expected] == [_examples(b) for b in got]
    again = PackedLoader(src, 64, 2, seed=9)
    assert all(np.array_equal(a.batches[0]["input_ids"], again.next_step(16).batches[0]["input_ids"])
               for a in expected[:3])


def test_whole_rows_hold_the_same_step_with_no_example_across_a_row(tmp_path):
    """For the row-masking attention paths: the same examples a step, none running across a row boundary."""
    shard = write_shard(tmp_path / "u" / "a" / "train" / "s.parquet", random_docs("a", 300, seed=6, lo=20, hi=200))
    flat, rows = (PackedLoader([DataSource("a", [shard])], 128, 4, seed=0, whole_rows=w) for w in (False, True))
    for _ in range(4):
        a, b = flat.next_step(32), rows.next_step(32)
        assert _examples(a) == _examples(b) and (a.n_tokens, a.n_targets) == (b.n_tokens, b.n_targets)
        assert all((batch["position_ids"][:, 0] == 0).all() for batch in b.batches)
        assert len(b.batches) >= len(a.batches)
