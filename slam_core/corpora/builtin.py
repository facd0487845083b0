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


TOPICS: tuple[Topic, ...] = (
    Topic("ocean", ("Nemo the fish", "Coral the crab", "Finn the sailor", "Pearl the dolphin"),
          ("the coral reef", "the sandy beach", "the deep blue sea", "the old harbor"),
          ("shell", "fishing net", "anchor", "treasure chest", "seaweed"),
          ("swam after", "polished", "dove down for", "pulled up"),
          ("a whale singing", "bright starfish", "big waves", "a sunken boat")),
    Topic("farm", ("Daisy the cow", "Farmer Joe", "Penny the pig", "Rusty the rooster"),
          ("the red barn", "the corn field", "the muddy pen", "the hay loft"),
          ("tractor", "bucket of milk", "basket of eggs", "bale of hay", "pitchfork"),
          ("carried", "filled", "pushed", "fixed"),
          ("sheep eating grass", "a noisy goat", "ducks in the pond", "baby chicks")),
    Topic("space", ("Captain Nova", "Robo the robot", "Astra the astronaut", "Zip the alien"),
          ("the moon base", "the rocket ship", "a far planet", "the space station"),
          ("telescope", "helmet", "laser", "moon rock", "star map"),
          ("launched", "repaired", "floated with", "scanned"),
          ("shooting stars", "a purple comet", "two bright moons", "the dark galaxy")),
    Topic("forest", ("Benny the bear", "Olive the owl", "Ferny the fox", "Sam the squirrel"),
          ("the tall pine trees", "the quiet pond", "a hollow log", "the mossy hill"),
          ("acorn", "pine cone", "honey pot", "berry basket", "feather"),
          ("gathered", "hid", "sniffed", "buried"),
          ("a deer drinking", "mushrooms on the ground", "a woodpecker", "tall ferns")),
    Topic("city", ("Taxi Tom", "Mayor Lucy", "Officer Dan", "Mia the painter"),
          ("the busy street", "the tall tower", "the subway station", "the city park"),
          ("bus ticket", "umbrella", "traffic light", "newspaper", "bicycle"),
          ("rode", "bought", "waved", "locked"),
          ("honking cars", "bright neon signs", "a crowded bridge", "pigeons on a roof")),
    Topic("kitchen", ("Chef Rosa", "Grandma Ann", "Baker Ben", "little Tim"),
          ("the warm kitchen", "the bakery", "the pantry", "the dinner table"),
          ("oven", "mixing bowl", "wooden spoon", "pancake", "loaf of bread"),
          ("stirred", "baked", "washed", "tasted"),
          ("steam from the pot", "sweet cookies", "a cracked egg", "flour everywhere")),
    Topic("school", ("Teacher Kim", "Max the student", "Lily the reader", "Coach Bob"),
          ("the classroom", "the library", "the playground", "the music room"),
          ("pencil", "notebook", "chalkboard", "backpack", "globe"),
          ("opened", "sharpened", "carried", "studied"),
          ("children reading", "a spelling test", "a loud bell", "colorful maps")),
    Topic("winter", ("Frosty the snowman", "Elsa the skier", "Pip the penguin", "Nick the sledder"),
          ("the snowy hill", "the frozen lake", "the ice cave", "the cold mountain"),
          ("sled", "scarf", "snowball", "mitten", "ice skate"),
          ("rolled", "slid with", "wrapped", "threw"),
          ("falling snowflakes", "icicles", "a polar bear", "a blizzard")),
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
_ENDINGS = ("In the end, {hero} kept the {obj} safe at {place}.", "That night, {hero} smiled at the {obj} and slept.",
            "Finally, {hero} took the {obj} home to {place}.")
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
    sentences.append(rng.choice(_ENDINGS).format(hero=name, obj=story_objects[0], place=place))
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
