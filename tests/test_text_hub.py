"""TinyStories and SWAG text from local hub-layout dirs; SWAG pair construction and the auto-BLEU filter;
text normalisation and sentence-aware utterance splitting."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slam_core.config import CorpusConfig
from slam_core.corpora import text_hub
from slam_core.eval.text_metrics import auto_bleu
from slam_core.schemas import STORIES, TRIPLES
from slam_core.synth.stinystories import plan_utterances
from slam_core.synth.text_norm import normalise_text, split_utterances

STORY = "Tom had a red ball. He threw it high! The ball landed in a tree. Tom climbed up and got it."


def _swag_row(i: int, label: int = 1, gold: str = "gold", sent1: str | None = None, endings=None) -> dict:
    endings = endings or [f"walks away slowly {i}.", f"picks up the ball {i}.", f"sings a song {i}.", f"falls asleep {i}."]
    return {"video-id": f"anetv_{i}", "fold-ind": str(i), "startphrase": "x", "sent1": sent1 or f"A boy runs onto field {i}.",
            "sent2": "The boy", "gold-source": gold, **{f"ending{k}": e for k, e in enumerate(endings)}, "label": label}


def write_swag_dir(root: Path, train_rows: list[dict], val_rows: list[dict]) -> Path:
    for split, rows in (("train", train_rows), ("validation", val_rows)):
        (root / "regular").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), root / "regular" / f"{split}-00000-of-00001.parquet")
    (root / "full").mkdir(exist_ok=True)  # the 'full' config is not read
    pq.write_table(pa.Table.from_pylist([{"junk": 1}]), root / "full" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([_swag_row(9, label=-1)]), root / "regular" / "test-00000-of-00001.parquet")
    return root


def write_tinystories_dir(root: Path, layout: str) -> Path:
    train = [STORY, "Only one sentence here.", "Sue saw a cat. The cat said meow."]
    valid = ["Ben likes cake. He eats it all."]
    if layout == "parquet":
        (root / "data").mkdir(parents=True)
        pq.write_table(pa.table({"text": train}), root / "data" / "train-00000-of-00001.parquet")
        pq.write_table(pa.table({"text": valid}), root / "data" / "validation-00000-of-00001.parquet")
    else:
        root.mkdir(parents=True)
        (root / "TinyStories-train.txt").write_text("\n<|endoftext|>\n".join(train) + "\n")
        (root / "TinyStories-valid.txt").write_text(valid[0] + "\n<|endoftext|>\n")
    return root


def test_swag_pairs_follow_the_builder_and_are_seeded():
    rows = [_swag_row(i, label=i % 4) for i in range(6)] + [_swag_row(7, gold="gen")]
    triples, dropped = text_hub.build_swag_triples(rows, "train", seed=5)
    assert len(triples) == 6 and dropped == {"not_gold": 1}
    for row, t in zip(rows, triples):
        endings = [row[f"ending{k}"] for k in range(4)]
        assert t["prompt_text"] == row["sent1"]
        assert t["chosen_text"] == f"The boy {endings[row['label']]}"
        wrong = t["rejected_text"].removeprefix("The boy ")
        assert wrong in endings and wrong != endings[row["label"]]
    assert text_hub.build_swag_triples(rows, "train", seed=5)[0] == triples
    other_seeds = [text_hub.build_swag_triples(rows, "train", seed=s)[0] for s in range(6, 12)]
    assert any(o != triples for o in other_seeds), "rejected ending does not depend on the seed"
    # a row's pair depends on (seed, pair id) only, not on the rows before it
    expected = random.Random("swag-5-swag-train-000003").choice(
        [e for k, e in enumerate([rows[3][f"ending{j}"] for j in range(4)]) if k != rows[3]["label"]])
    assert triples[3]["rejected_text"] == f"The boy {expected}"


def test_swag_auto_bleu_filter_on_prompt_plus_chosen():
    repetitive = _swag_row(1, label=0, sent1="The man runs and runs and runs and runs.",
                           endings=["runs and runs and runs.", "stops.", "sits.", "waves."])
    fine = _swag_row(2)
    text = f"{repetitive['sent1']} The boy {repetitive['ending0']}"
    assert auto_bleu(text, 2) >= 0.3
    assert auto_bleu(f"{fine['sent1']} The boy {fine['ending1']}", 2) < 0.3
    triples, dropped = text_hub.build_swag_triples([repetitive, fine], "train", seed=0)
    assert [t["pair_id"] for t in triples] == ["swag-train-000001"] and dropped == {"repetitive": 1}
    kept, _ = text_hub.build_swag_triples([repetitive, fine], "train", seed=0, max_auto_bleu=1.0)
    assert len(kept) == 2


def test_swag_local_dir_to_triples(tmp_path):
    root = write_swag_dir(tmp_path / "swag", [_swag_row(i) for i in range(5)], [_swag_row(i) for i in range(3)])
    out = text_hub.prepare_swag(root, tmp_path / "triples.parquet", seed=1, max_rows=4)
    table = pq.read_table(out["path"])
    assert table.schema.equals(TRIPLES)
    assert out["per_split"] == {"heldout": 3, "train": 4}
    assert {r["split"] for r in table.to_pylist()} == {"train", "heldout"}
    bad = tmp_path / "bad"
    (bad / "regular").mkdir(parents=True)
    pq.write_table(pa.table({"sent1": ["x"]}), bad / "regular" / "train.parquet")
    with pytest.raises(ValueError, match="missing .*label"):
        text_hub.prepare_swag(bad, tmp_path / "t2.parquet", seed=1)


@pytest.mark.parametrize("layout", ["parquet", "txt"])
def test_tinystories_local_dir_to_stories(tmp_path, layout):
    root = write_tinystories_dir(tmp_path / "ts", layout)
    out = text_hub.prepare_tinystories(root, tmp_path / "stories.parquet")
    table = pq.read_table(out["path"])
    assert table.schema.equals(STORIES)
    rows = table.to_pylist()
    assert out["per_split"] == {"train": 2, "heldout": 1} and out["skipped"] == {"fewer_than_two_sentences": 1}
    assert rows[0]["sentences"] == ["Tom had a red ball.", "He threw it high!", "The ball landed in a tree.",
                                    "Tom climbed up and got it."]
    assert len({r["topic"] for r in rows}) == len(rows)  # each story is its own topic (tSC negatives)
    capped = text_hub.prepare_tinystories(root, tmp_path / "capped.parquet", max_rows=1)
    assert capped["per_split"] == {"train": 1, "heldout": 1}


def test_prepare_corpus_task_uses_tinystories_source(tmp_path):
    from tasks.data import prepare_corpus

    cfg = CorpusConfig(source="tinystories", tinystories_local_dir=str(write_tinystories_dir(tmp_path / "ts", "txt")),
                       swag_local_dir=str(write_swag_dir(tmp_path / "swag", [_swag_row(1)], [_swag_row(2)])))
    rec = prepare_corpus.fn(cfg, 3, str(tmp_path / "raw"), "fp-test", str(tmp_path / "root"))
    assert rec["rows"] == 3 + 2 and not rec["reused"]
    assert pq.read_table(rec["stories"]).num_rows == 3 and pq.read_table(rec["triples"]).num_rows == 2
    assert prepare_corpus.fn(cfg, 3, str(tmp_path / "raw"), "fp-test", str(tmp_path / "root"))["reused"]


def test_offline_hub_text_source_is_one_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from slam_core.corpora.hub import HubUnavailableError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match="roneneldan/TinyStories.*tinystories_local_dir"):
        text_hub.download_tinystories(tmp_path / "dl")


def test_normalise_text_spells_symbols_and_drops_the_unspeakable():
    norm = normalise_text("Tom\u00a0&\u200bSue\tpaid 5%\u2014 \u201cwow\u201d \U0001F600 \u4e2d caf\u00e9\x07!")
    assert norm.text == 'Tom and Sue paid 5 percent , "wow" café !'
    assert norm.dropped_chars == 2  # the emoji and the CJK character
    assert normalise_text("\x00\x01 \U0001F600").text == ""


def test_split_utterances_is_sentence_aware_and_loses_nothing():
    text = " ".join([STORY] * 4)
    parts = split_utterances(text, max_chars=100)
    assert all(len(p) <= 100 for p in parts) and " ".join(parts) == text
    assert all(p.endswith((".", "!")) for p in parts)  # whole sentences when sentences fit
    long_sentence = "the dog ran, " * 30 + "and then it slept in the warm sun all day long without a care"
    parts = split_utterances(long_sentence, max_chars=60)
    assert all(len(p) <= 60 for p in parts) and " ".join(parts) == " ".join(long_sentence.split())
    assert all(p.endswith(",") for p in parts[:-2])  # clause ends before word ends
    assert split_utterances("a" * 25, max_chars=10) == ["a" * 10, "a" * 10, "a" * 5]


def test_plan_utterances_splits_long_stories_and_counts_empty_ones():
    stories = [{"story_id": "s1", "sentences": [STORY] * 10}, {"story_id": "s2", "sentences": ["Hi there.", "Bye."]},
               {"story_id": "s3", "sentences": ["\U0001F600", "..."]}]
    utts, bad = plan_utterances(stories, max_chars=200)
    s1 = [u for u in utts if u["story_id"] == "s1"]
    assert len(s1) > 1 and all(u["split_sentence"] for u in s1) and all(len(u["text"]) <= 200 for u in s1)
    assert " ".join(u["text"] for u in s1) == " ".join([STORY] * 10)
    assert [u["split_sentence"] for u in utts if u["story_id"] == "s2"] == [False]
    assert bad == [("s3", "empty_text", "nothing speakable after normalisation")]
