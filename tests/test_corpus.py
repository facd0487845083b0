"""Built-in corpus: determinism, counts, topic coherence, story endings and SWAG-like triples."""

from __future__ import annotations

import re
from collections import Counter

import pyarrow.parquet as pq
import pytest

from slam_core.config import CorpusConfig
from slam_core.corpora.builtin import TOPICS, generate_stories, generate_triples, prepare_builtin_corpus
from slam_core.schemas import STORIES, TRIPLES

_STOP = {"the", "a", "an", "and", "with", "to", "at", "of", "near", "on", "in", "they", "then", "saw", "felt", "looked"}


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in _STOP}


def _topic_vocab() -> dict[str, set[str]]:
    vocab = {}
    for t in TOPICS:
        vocab[t.name] = _words(" ".join(t.heroes + t.places + t.objects + t.actions + t.sights))
    shared = [w for w, n in Counter(w for v in vocab.values() for w in v).items() if n > 1]
    return {name: v - set(shared) for name, v in vocab.items()}


def _best_topic(text: str, vocab: dict[str, set[str]]) -> str:
    scores = {name: len(_words(text) & v) for name, v in vocab.items()}
    return max(scores, key=scores.get)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    cfg = CorpusConfig(n_train_stories=40, n_heldout_stories=16, n_swag_train=12, n_swag_heldout=8)
    a = prepare_builtin_corpus(cfg, 7, tmp_path / "a")
    b = prepare_builtin_corpus(cfg, 7, tmp_path / "b")
    c = prepare_builtin_corpus(cfg, 8, tmp_path / "c")
    for key in ("stories", "triples"):
        assert open(a[key], "rb").read() == open(b[key], "rb").read()
        assert open(a[key], "rb").read() != open(c[key], "rb").read()
    assert (a["n_stories"], a["n_triples"]) == (56, 20)
    assert pq.read_schema(a["stories"]).equals(STORIES)
    assert pq.read_schema(a["triples"]).equals(TRIPLES)
    assert not list((tmp_path / "a").glob(".*"))  # no temporary files left behind


def test_story_counts_topics_and_lengths():
    cfg = CorpusConfig(n_topics=8, n_train_stories=80, n_heldout_stories=24, sentences_per_story=(4, 6))
    stories = generate_stories(cfg, 3)
    by_split = Counter(s["split"] for s in stories)
    assert by_split == {"train": 80, "heldout": 24}
    for split in ("train", "heldout"):
        topics = Counter(s["topic"] for s in stories if s["split"] == split)
        assert len(topics) == 8 and max(topics.values()) - min(topics.values()) <= 1  # balanced
    assert all(4 <= len(s["sentences"]) <= 6 for s in stories)
    texts = [" ".join(s["sentences"]) for s in stories]
    assert len(set(texts)) == len(texts), "verbatim duplicate stories"
    assert len({s["story_id"] for s in stories}) == len(stories)


def test_story_words_identify_topic_and_ending_reuses_story_words():
    stories = generate_stories(CorpusConfig(n_topics=10, n_train_stories=60, n_heldout_stories=20), 5)
    vocab = _topic_vocab()
    for story in stories:
        assert _best_topic(" ".join(story["sentences"]), vocab) == story["topic"]
        ending, body = story["sentences"][-1], " ".join(story["sentences"][:-1])
        shared = _words(ending) & _words(body) & vocab[story["topic"]]
        assert len(shared) >= 2, (ending, body)  # the hero's name and an object of this story


def test_triples_chosen_continues_prompt_topic_and_rejected_does_not():
    cfg = CorpusConfig(n_swag_train=30, n_swag_heldout=20)
    triples = generate_triples(cfg, 11)
    assert Counter(t["split"] for t in triples) == {"train": 30, "heldout": 20}
    vocab = _topic_vocab()
    for t in triples:
        prompt_topic = _best_topic(t["prompt_text"], vocab)
        assert _best_topic(t["chosen_text"], vocab) == prompt_topic
        assert _best_topic(t["rejected_text"], vocab) != prompt_topic
        assert t["chosen_text"] != t["rejected_text"]


def test_too_many_topics_is_a_clear_error():
    with pytest.raises(ValueError, match="n_topics"):
        generate_stories(CorpusConfig(n_topics=len(TOPICS) + 1), 0)
