"""A seeded built-in text corpus: a small stand-in for TinyStories (stories) and SWAG (triples).

Each topic has its own vocabulary (names, places, objects, actions, feelings), so a story's words
identify its topic. A story's last sentence reuses its hero and an object it already mentioned, which
is what the tSC-like evaluation tests ("is this ending from the same story?"). SWAG-like triples pair a
situation with a continuation from the same topic (chosen) and from another topic (rejected).
Same config + seed -> same rows -> byte-identical Parquet files.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from slam_core.atomic import atomic_path
from slam_core.config import CorpusConfig
from slam_core.schemas import STORIES, TRIPLES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topic:
    name: str
    heroes: tuple[str, ...]
    places: tuple[str, ...]
    objects: tuple[str, ...]
    actions: tuple[str, ...]  # past tense verb phrases taking an object: "{action} the {object}"
    sights: tuple[str, ...]  # things seen or heard, complete noun phrases


# The smoke tokeniser is a random-weight HuBERT whose units carry spectral shape, not words, so each topic's
# content words share a sound (alliteration): a topic then shows up in the unit statistics, and an LM that
# uses its context can tell a same-topic ending from an other-topic one (the tSC-like evaluation).
TOPICS: tuple[Topic, ...] = (
    Topic("ocean", ("Sally the seal", "Sid the shark", "Shelly the starfish", "Sam the sailor"),
          ("the salty sea", "the sandy shore", "the sunken ship", "the seashell cove"),
          ("seashell", "sail", "shovel", "sponge", "silver sash"),
          ("splashed", "searched for", "shook", "sorted"),
          ("silver sardines", "a sea serpent", "sunshine on the sea", "soft sand")),
    Topic("farm", ("Betty the bull", "Peter the pony", "Bobby the bunny", "Polly the pig"),
          ("the big barn", "the pumpkin patch", "the pig pen", "the potato plot"),
          ("bucket", "basket", "pail", "big bale", "pitchfork"),
          ("bumped", "picked up", "patted", "packed"),
          ("puppies playing", "a bumble bee", "purple plums", "baby birds")),
    Topic("space", ("Commander Kate", "Cosmo the comet", "Kip the cadet", "Captain Koda"),
          ("the cold crater", "the cockpit", "the comet camp", "the control room"),
          ("compass", "camera", "capsule", "computer", "cable"),
          ("clicked", "collected", "cleaned", "coded"),
          ("a cluster of comets", "crystal craters", "colorful clouds", "a cosmic cave")),
    Topic("forest", ("Fiona the fox", "Felix the fawn", "Vera the vole", "Fred the frog"),
          ("the foggy forest", "the fern valley", "the fallen fir", "the forest floor"),
          ("feather", "flower", "fig", "violet", "fir cone"),
          ("found", "fetched", "followed", "fanned"),
          ("fireflies flickering", "fuzzy ferns", "a falcon flying", "fallen leaves")),
    Topic("city", ("Taxi Tom", "Detective Dot", "Tina the tailor", "Dan the driver"),
          ("the tall tower", "the downtown depot", "the train track", "the traffic tunnel"),
          ("ticket", "tire", "toolbox", "door key", "trumpet"),
          ("tapped", "dropped", "tested", "tied"),
          ("ten taxis", "a double decker", "tiny dogs", "a tall tram")),
    Topic("kitchen", ("Mama Mia", "Nana May", "Milo the miller", "Nina the nanny"),
          ("the main kitchen", "the noodle nook", "the market", "the mill"),
          ("muffin", "melon", "mango", "noodle", "mug"),
          ("mashed", "mixed", "minced", "nibbled"),
          ("melting marshmallows", "many muffins", "a nutmeg mill", "moon shaped noodles")),
    Topic("school", ("Lily the learner", "Ruby the reader", "Larry the lad", "Rory the runner"),
          ("the learning room", "the long hallway", "the library", "the reading rug"),
          ("ruler", "lunchbox", "letter", "rubber", "lantern"),
          ("lifted", "rolled", "read", "labeled"),
          ("little rabbits", "rows of lockers", "a red rainbow", "loud laughter")),
    Topic("winter", ("Wally the walrus", "Holly the husky", "Winnie the wolf", "Hal the hiker"),
          ("the white woods", "the windy hill", "the winter hut", "the hollow hill"),
          ("wool hat", "wagon", "whistle", "warm hood", "wheel"),
          ("wrapped", "hauled", "held", "wiped"),
          ("white hares", "howling wind", "a heavy hailstorm", "whirling wisps")),
    Topic("jungle", ("Leo the lion", "Mango the monkey", "Tiki the parrot", "Ella the elephant"),
          ("the green jungle", "the muddy river", "the tall vines", "the hidden temple"),
          ("banana", "coconut", "drum", "vine rope", "papaya"),
          ("swung", "cracked", "beat", "peeled"),
          ("a sleepy snake", "bright flowers", "a roaring waterfall", "a striped tiger")),
    Topic("castle", ("King Arthur", "Princess Ivy", "Knight Oscar", "Dragon Ember"),
          ("the stone castle", "the throne room", "the high tower", "the royal garden"),
          ("crown", "sword", "shield", "golden key", "magic lamp"),
          ("guarded", "polished", "lifted", "hid"),
          ("a grand feast", "banners waving", "a drawbridge", "a royal horse")),
)

_FEELINGS = ("happy", "proud", "curious", "brave", "excited", "calm")
_MIDDLE = (
    "At {place}, {hero} saw {sight}.",
    "{hero} {action} the {obj}.",
    "Then {hero} {action} the {obj} near {place}.",
    "{hero} felt {feeling} and looked at {sight}.",
    "Soon a friend came to {place} with {obj_a}.",
    "Together they {action} the {obj}.",
)
_OPENINGS = ("One morning, {hero} went to {place} with {obj_a}.", "Once upon a time, {hero} found {obj_a} near {place}.",
             "On a sunny day, {hero} brought {obj_a} to {place}.")
# Endings carry three topic items (hero, object, place or sight) so a same-topic ending is audible.
_ENDINGS = ("In the end, {hero} kept the {obj} safe at {place} near {sight}.",
            "That night, {hero} dreamed of {sight} and the {obj} at {place}.",
            "Finally, {hero} took the {obj} home to {place} and saw {sight}.")
_MAX_TRIES = 50


def _topics(cfg: CorpusConfig) -> tuple[Topic, ...]:
    if cfg.n_topics > len(TOPICS):
        raise ValueError(f"corpus.n_topics={cfg.n_topics}: the built-in generator has {len(TOPICS)} topics")
    return TOPICS[: cfg.n_topics]


def _short(hero: str) -> str:
    """'Nemo the fish' -> 'Nemo' for later mentions (keeps the name that ties the story together)."""
    return hero.split(" the ")[0]


def _capitalise(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _story_sentences(topic: Topic, n_sentences: int, rng: random.Random) -> list[str]:
    hero = rng.choice(topic.heroes)
    name = _short(hero)
    place = rng.choice(topic.places)
    story_objects = rng.sample(topic.objects, 2)
    sentences = [rng.choice(_OPENINGS).format(hero=hero, place=place, obj_a=_with_article(story_objects[0]))]
    for template in rng.sample(_MIDDLE, n_sentences - 2):
        obj = rng.choice(story_objects)
        sentences.append(_capitalise(template.format(
            hero=name, place=rng.choice(topic.places), sight=rng.choice(topic.sights),
            action=rng.choice(topic.actions), obj=obj, obj_a=_with_article(obj), feeling=rng.choice(_FEELINGS),
        )))
    # The ending names the hero and the object from the opening: the cue the tSC-like eval relies on.
    sentences.append(rng.choice(_ENDINGS).format(hero=name, obj=story_objects[0], place=place,
                                                 sight=rng.choice(topic.sights)))
    return sentences


def generate_stories(cfg: CorpusConfig, seed: int) -> list[dict]:
    """STORIES rows: cfg.n_train_stories 'train' then cfg.n_heldout_stories 'heldout', topics balanced."""
    topics = _topics(cfg)
    rng = random.Random(f"builtin-stories-{seed}")
    lo, hi = cfg.sentences_per_story
    hi = min(hi, len(_MIDDLE) + 2)
    seen: set[str] = set()
    rows: list[dict] = []
    for split, count in (("train", cfg.n_train_stories), ("heldout", cfg.n_heldout_stories)):
        # Balanced topics in a seeded order.
        split_topics = [topics[i % len(topics)] for i in range(count)]
        rng.shuffle(split_topics)
        for i, topic in enumerate(split_topics):
            for _ in range(_MAX_TRIES):
                sentences = _story_sentences(topic, rng.randint(min(lo, hi), hi), rng)
                key = " ".join(sentences)
                if key not in seen:
                    break
            else:
                raise ValueError(f"cannot make {count} distinct {split} stories; lower the story counts")
            seen.add(key)
            rows.append({"story_id": f"story-{split}-{i:05d}", "topic": topic.name, "split": split,
                         "sentences": sentences})
    return rows


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _situation(topic: Topic, rng: random.Random) -> str:
    return f"{rng.choice(topic.heroes)} walked to {rng.choice(topic.places)} with {_with_article(rng.choice(topic.objects))}."


def _continuation(topic: Topic, rng: random.Random) -> str:
    return f"Then they {rng.choice(topic.actions)} the {rng.choice(topic.objects)} and saw {rng.choice(topic.sights)}."


def generate_triples(cfg: CorpusConfig, seed: int) -> list[dict]:
    """TRIPLES rows: a situation, a same-topic continuation (chosen) and an other-topic one (rejected)."""
    topics = _topics(cfg)
    rng = random.Random(f"builtin-triples-{seed}")
    rows: list[dict] = []
    for split, count in (("train", cfg.n_swag_train), ("heldout", cfg.n_swag_heldout)):
        for i in range(count):
            topic = topics[i % len(topics)]
            other = rng.choice([t for t in topics if t.name != topic.name])
            rows.append({
                "pair_id": f"swag-{split}-{i:05d}", "split": split, "prompt_text": _situation(topic, rng),
                "chosen_text": _continuation(topic, rng), "rejected_text": _continuation(other, rng),
            })
    return rows


def write_parquet_atomic(rows: list[dict], schema: pa.Schema, out_path: Path) -> Path:
    """Write `rows` with `schema` to `out_path` through a temporary file (deterministic bytes)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(out_path)


def prepare_builtin_corpus(cfg: CorpusConfig, seed: int, out_dir: Path) -> dict:
    """Write out_dir/stories.parquet and out_dir/triples.parquet; returns their paths and row counts."""
    out_dir = Path(out_dir)
    stories = generate_stories(cfg, seed)
    triples = generate_triples(cfg, seed)
    stories_path = write_parquet_atomic(stories, STORIES, out_dir / "stories.parquet")
    triples_path = write_parquet_atomic(triples, TRIPLES, out_dir / "triples.parquet")
    log.info("built-in corpus: %d stories, %d triples in %s", len(stories), len(triples), out_dir)
    return {"stories": str(stories_path), "triples": str(triples_path),
            "n_stories": len(stories), "n_triples": len(triples)}
