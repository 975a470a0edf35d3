"""A synthetic corpus of long documents with long-range dependencies, for the demo and memory tests.

Each document states `facts_per_doc` facts early and recalls each one again much later, with filler
in between::

    <filler> The code of Zorvak is amber. <filler> The code of Belmiru is jade. <filler> ...
    <at least gap_words words of filler>
    Recall: the code of Belmiru is jade. <filler> Recall: the code of Zorvak is amber. <filler>

* Keys are made-up names (unique within a document); values are drawn uniformly from a closed set of
  `num_values` words (`value_set`), so guessing a value is right with probability 1/num_values
  (`chance` in each record).
* The recall has the statement's surface form ("the code of K is V."), so a denoiser that masks the
  value of a recall sentence can only restore it from what it remembers of the statement.
* Filler sentences come from word lists that contain no key and no value: a recall cannot be
  answered from the segment it is in.
* Statements come first, then at least `gap_words` words of filler, then the recalls in a shuffled
  order. With `max_repeats` > 1 each fact is stated a uniform 1..max_repeats times in a row (a few
  filler words apart): a curriculum inside the data. A value stated once is one token in a segment,
  too faint for a memory that starts out averaging its segment to pick up, so a model trained only on
  single statements stays at chance (measured in NOTES.md); facts stated several times make the
  memory's write and read paths worth learning, and what is learnt carries over to facts stated once.
  With `recalls_per_fact` > 1 the recalls come in that many rounds, `recall_spacing_words` of filler
  apart: recalls at growing distances from the statement, each a target for the denoiser.
  `lead_words` bounds the filler before the first statement and `short_keys` makes keys one syllable (1-2
  tokens): with `repeat_filler_words` 0 and `lead_words` 0 a document opens with its statements packed densely
  into a fresh memory, which is what the memory's write needs to be learnt (NOTES.md, session 6).
  The gap is counted from a fact's last statement. The default gap of 128 words puts every recall at
  least 2 segments after its statement when segments are 64 tokens, since every word is at least one
  token (true of SentencePiece and byte-level BPE tokenizers, which never merge across spaces): 128
  tokens lie between the end of a statement in segment k and the recall, more than segment k's rest
  plus segment k+1. With a ~1-2k vocabulary tokenizer trained on this corpus a document is about 6-12
  such segments.

Output: JSON lines `{"id", "text", "facts": [{"key", "value", "statement", "question", "repeats"}], "chance",
"num_values"}`. Deterministic from `seed`: document i depends only on (seed, i, the settings).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: The closed set values are drawn from; `value_set(n)` is its first n words.
VALUE_WORDS: tuple[str, ...] = (
    "amber", "cobalt", "crimson", "ivory", "jade", "scarlet", "violet", "indigo",
    "olive", "silver", "copper", "azure", "teal", "maroon", "coral", "ochre",
    "saffron", "umber", "lilac", "mauve", "russet", "sepia", "bronze", "pearl",
    "ruby", "emerald", "topaz", "onyx", "garnet", "opal", "slate", "cyan",
)  # fmt: skip

STATEMENT = "The code of {key} is {value}."
QUESTION = "Recall: the code of {key} is {value}."

_ADJECTIVES = (
    "quiet", "old", "small", "busy", "distant", "narrow", "gentle", "heavy", "bright", "cold", "warm",
    "tired", "curious", "ancient", "empty", "crowded", "wooden", "broken", "hidden", "famous", "simple",
    "strange", "careful", "noisy", "calm", "lonely", "steep", "muddy", "sunny", "windy",
)  # fmt: skip
_NOUNS = (
    "farmer", "teacher", "river", "bridge", "letter", "window", "garden", "road", "horse", "boat",
    "lamp", "clock", "basket", "wagon", "kettle", "painter", "sailor", "merchant", "child", "dog",
    "cat", "tree", "door", "book", "song", "storm", "train", "baker", "fisherman", "map",
)  # fmt: skip
_PLURALS = (
    "farmers", "children", "travelers", "birds", "workers", "students", "merchants", "sailors",
    "neighbors", "horses", "dogs", "clouds", "bakers", "pilgrims", "musicians", "guards",
)  # fmt: skip
_PLACES = (
    "valley", "harbor", "forest", "square", "kitchen", "library", "hill", "station", "field",
    "market", "village", "castle", "shore", "orchard", "workshop", "meadow", "tavern", "mill",
)  # fmt: skip
_VERBS = (
    "carried", "painted", "repaired", "watched", "found", "cleaned", "moved", "opened", "sold",
    "visited", "followed", "built", "noticed", "borrowed", "described", "measured",
)  # fmt: skip
_INTRANSITIVE = (
    "walked", "waited", "rested", "sang", "laughed", "worked", "slept", "wandered", "arrived",
    "returned", "listened", "danced", "talked", "hurried",
)  # fmt: skip
_ADVERBS = (
    "slowly", "quietly", "happily", "early", "late", "together", "again", "carefully", "suddenly",
    "often", "patiently", "briefly",
)  # fmt: skip
_TIMES = (
    "in the morning", "at noon", "in the evening", "before dawn", "after lunch", "on Sunday",
    "last winter", "every spring", "at night", "that autumn",
)  # fmt: skip
_PERIODS = ("morning", "evening", "day", "week", "season", "night", "summer", "winter")
_EVENTS = ("rain", "festival", "meeting", "harvest", "journey", "lesson", "wedding", "market day")
_PEOPLE = ("Anna", "Marcus", "Elena", "Tomas", "Greta", "Oskar", "Lena", "Victor", "Maria", "Hugo", "Clara", "Felix")
_PREPOSITIONS = ("across", "near", "behind", "along", "inside", "toward", "around", "beside")
_TEMPLATES = (
    "The {adj} {noun} {verb} the {noun2} {prep} the {place}.",
    "{Person} {verb} the {adj} {noun} {time}.",
    "In the {place}, the {plural} {intrans} {adv}.",
    "Nobody knew why the {noun} was so {adj}.",
    "After the {event}, the {plural} {intrans} {adv} {prep} the {place}.",
    "It was a {adj} {period}, and the {noun} {intrans} {prep} the {place}.",
    "Some {plural} {intrans} near the {adj} {place} every {period}.",
    "{Person} said that the {noun} had {intrans} {adv}.",
    "The {place} was {adj} and {adj2} {time}.",
    "Many {plural} {verb} a {adj} {noun} before the {event}.",
    "{Person} and {Person2} {intrans} {prep} the {place} {time}.",
    "Was the {noun} really {adj}, or only {adj2}?",
    "What a {adj} {event} it was!",
)

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kr",
    "tr",
    "th",
    "sh",
    "zh",
)
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "y")
_CODAS = ("", "", "n", "r", "l", "k", "x", "th", "s", "m")

#: Every word filler text can contain (lower case); keys are generated to avoid them.
FILLER_WORDS = frozenset(
    w.lower()
    for group in (
        _ADJECTIVES,
        _NOUNS,
        _PLURALS,
        _PLACES,
        _VERBS,
        _INTRANSITIVE,
        _ADVERBS,
        _PERIODS,
        _PEOPLE,
        _PREPOSITIONS,
    )
    for w in group
) | frozenset(
    w.lower() for phrase in (*_TIMES, *_EVENTS, *_TEMPLATES) for w in phrase.replace(",", " ").split() if "{" not in w
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of the synthetic corpus (see the module docstring)."""

    seed: int = 0
    num_values: int = 16
    facts_per_doc: int = 4
    gap_words: int = 128
    max_repeats: int = 1
    repeat_filler_words: int = 8
    recalls_per_fact: int = 1
    recall_spacing_words: int = 40
    lead_words: int = 30
    short_keys: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.num_values <= len(VALUE_WORDS):
            raise ValueError(f"num_values must be in [2, {len(VALUE_WORDS)}], got {self.num_values}")
        if self.facts_per_doc < 1:
            raise ValueError(f"facts_per_doc must be >= 1, got {self.facts_per_doc}")
        if self.gap_words < 0:
            raise ValueError(f"gap_words must be >= 0, got {self.gap_words}")
        if self.max_repeats < 1:
            raise ValueError(f"max_repeats must be >= 1, got {self.max_repeats}")
        if self.repeat_filler_words < 0:
            raise ValueError(f"repeat_filler_words must be >= 0, got {self.repeat_filler_words}")
        if self.recalls_per_fact < 1:
            raise ValueError(f"recalls_per_fact must be >= 1, got {self.recalls_per_fact}")
        if self.recall_spacing_words < 0:
            raise ValueError(f"recall_spacing_words must be >= 0, got {self.recall_spacing_words}")
        if self.lead_words < 0:
            raise ValueError(f"lead_words must be >= 0, got {self.lead_words}")
        if self.short_keys and self.facts_per_doc > 100:
            raise ValueError(
                f"short_keys allows at most 100 facts per document, got facts_per_doc={self.facts_per_doc}"
            )


def value_set(num_values: int) -> tuple[str, ...]:
    """The closed set of values of a corpus made with `num_values`."""
    return VALUE_WORDS[:num_values]


def chance_level(num_values: int) -> float:
    """Accuracy of guessing a value without memory."""
    return 1.0 / num_values


def _sentence(rng: random.Random) -> str:
    person, person2 = rng.sample(_PEOPLE, 2)
    noun, noun2 = rng.sample(_NOUNS, 2)
    adj, adj2 = rng.sample(_ADJECTIVES, 2)
    return rng.choice(_TEMPLATES).format(
        adj=adj, adj2=adj2, noun=noun, noun2=noun2, plural=rng.choice(_PLURALS), place=rng.choice(_PLACES),
        verb=rng.choice(_VERBS), intrans=rng.choice(_INTRANSITIVE), adv=rng.choice(_ADVERBS),
        time=rng.choice(_TIMES), period=rng.choice(_PERIODS), event=rng.choice(_EVENTS),
        prep=rng.choice(_PREPOSITIONS), Person=person, Person2=person2,
    )  # fmt: skip


def filler(rng: random.Random, min_words: int) -> list[str]:
    """Filler sentences totalling at least `min_words` words."""
    sentences: list[str] = []
    words = 0
    while words < min_words:
        sentences.append(_sentence(rng))
        words += len(sentences[-1].split())
    return sentences


def _key(rng: random.Random, taken: set[str], short: bool = False) -> str:
    """A made-up name not in `taken`, no filler word and no value: 2-3 syllables, or one syllable of >= 3 letters
    when `short` (1-2 tokens, so back-to-back statements pack more values into a segment)."""
    while True:
        if short:
            name = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
            if len(name) < 3:
                continue
        else:
            name = "".join(
                rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.randint(2, 3))
            )
        if name not in taken and name not in FILLER_WORDS and name not in VALUE_WORDS:
            taken.add(name)
            return name.capitalize()


def make_document(index: int, config: SyntheticConfig = SyntheticConfig()) -> dict[str, Any]:
    """Document `index` of the corpus defined by `config` (a pure function of both)."""
    rng = random.Random(f"memformers-synthetic:{config.seed}:{index}")
    values = value_set(config.num_values)
    taken: set[str] = set()
    facts = []
    for _ in range(config.facts_per_doc):
        key, value = _key(rng, taken, config.short_keys), rng.choice(values)
        # no draw when max_repeats is 1: corpora made before the option stay the same, document for document
        repeats = rng.randint(1, config.max_repeats) if config.max_repeats > 1 else 1
        facts.append(
            {
                "key": key,
                "value": value,
                "statement": STATEMENT.format(key=key, value=value),
                "question": QUESTION.format(key=key, value=value),
                "repeats": repeats,
            }
        )
    sentences = filler(rng, rng.randint(0, config.lead_words))
    for fact in facts:
        for repeat in range(fact["repeats"]):
            sentences.append(fact["statement"])
            if repeat < fact["repeats"] - 1:
                sentences += filler(rng, rng.randint(0, config.repeat_filler_words))
        sentences += filler(rng, rng.randint(5, 20))
    sentences += filler(rng, config.gap_words)
    for round_ in range(config.recalls_per_fact):
        if round_:  # no draw with one round: corpora made before the option stay the same
            sentences += filler(rng, config.recall_spacing_words)
        for fact in rng.sample(facts, len(facts)):
            sentences.append(fact["question"])
            sentences += filler(rng, rng.randint(5, 20))
    sentences += filler(rng, rng.randint(0, 30))
    return {
        "id": f"synthetic-{config.seed}-{index:07d}",
        "text": " ".join(sentences),
        "facts": facts,
        "chance": chance_level(config.num_values),
        "num_values": config.num_values,
    }


def generate_documents(num_docs: int, config: SyntheticConfig = SyntheticConfig()) -> Iterator[dict[str, Any]]:
    """Documents 0..num_docs-1 of the corpus defined by `config`."""
    for index in range(num_docs):
        yield make_document(index, config)


def write_synthetic_corpus(
    path: str | os.PathLike, num_docs: int, config: SyntheticConfig = SyntheticConfig(), progress: bool = False
) -> dict[str, Any]:
    """Write `num_docs` documents as JSON lines to `path`; a summary (counts, chance level, values)."""
    from tqdm.auto import tqdm

    words = facts = 0
    with open(path, "w", encoding="utf-8") as f:
        for doc in tqdm(generate_documents(num_docs, config), total=num_docs, desc="generating", disable=not progress):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            words += len(doc["text"].split())
            facts += len(doc["facts"])
    return {
        "path": os.fspath(path),
        "documents": num_docs,
        "facts": facts,
        "words": words,
        "mean_words_per_document": words / max(num_docs, 1),
        "values": list(value_set(config.num_values)),
        "chance": chance_level(config.num_values),
        "config": dataclasses.asdict(config),
    }
