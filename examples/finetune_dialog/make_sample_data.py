"""Write a small, deterministic multi-session dialogue file in the reference JSON format (qywu/memformers'
examples/finetune_dialog/data): a dict of dialogues, each a list of turns with `dial_id`, `turn_id`, `text`, `role`
and `session`.

    python examples/finetune_dialog/make_sample_data.py [--output data/sample_dialogs.json] [--dialogues 12]

In session 1 Speaker 2 states personal facts (a pet's name, a job, a city) among small talk; in session 2, several
turns later, Speaker 1 asks about them and Speaker 2 answers. With a context window of a turn or two, the answers
are only predictable from the memory — what this data is for. The same arguments always give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PETS = ["dog", "cat", "parrot", "horse", "rabbit", "goat"]
PET_NAMES = ["Rex", "Luna", "Milo", "Bella", "Oscar", "Daisy", "Hugo", "Lena", "Tomas", "Victor"]
JOBS = ["baker", "sailor", "teacher", "farmer", "painter", "merchant", "musician", "guard"]
CITIES = ["Lisbon", "Oslo", "Cairo", "Lima", "Kyoto", "Quebec", "Dublin", "Perth"]
SMALL_TALK = [
    ("How was your weekend?", "Quiet. I mostly read by the window."),
    ("Did you see the storm last night?", "Yes, the river was loud all evening."),
    ("What are you cooking tonight?", "Some soup with bread from the market."),
    ("Any plans for the holidays?", "Maybe a trip to the hills with friends."),
    ("Have you read anything good lately?", "A long book about old ships. It is slow but fun."),
    ("Is it cold where you are?", "A little. The mornings are foggy now."),
    ("Do you like music?", "I do, mostly quiet songs in the evening."),
    ("How is the garden doing?", "The tomatoes are finally red."),
]
SPEAKERS = ("Speaker 1", "Speaker 2")


def session_one(rng: random.Random, pet: str, name: str, job: str, city: str) -> list[str]:
    """Greeting, the facts, then small talk: the facts end up several turns before the session ends."""
    chat = rng.sample(SMALL_TALK, 2)
    return [
        "Hi! Nice to meet you. What do you do?",
        f"I work as a {job} in {city}.",
        "That sounds interesting. Do you have any pets?",
        f"Yes, I have a {pet} named {name}.",
        *[line for pair in chat for line in pair],
    ]


def session_two(rng: random.Random, pet: str, name: str, job: str, city: str) -> list[str]:
    """Small talk, then the questions whose answers were given in session 1."""
    chat = rng.sample(SMALL_TALK, 2)
    return [
        "Good to talk to you again!",
        "Likewise. It has been a while.",
        *[line for pair in chat for line in pair],
        f"How is your {pet} doing? I forgot the name.",
        f"My {pet} {name} is doing great, thanks.",
        "And remind me, where do you work?",
        f"I am a {job} in {city}.",
    ]


def make_dialogues(count: int, seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    dialogues = {}
    for index in range(count):
        facts = (rng.choice(PETS), rng.choice(PET_NAMES), rng.choice(JOBS), rng.choice(CITIES))
        dial_id = f"sample_{index}"
        turns = []
        for session, lines in ((1, session_one(rng, *facts)), (2, session_two(rng, *facts))):
            turns += [
                {
                    "dial_id": dial_id,
                    "turn_id": turn_id,
                    "text": text,
                    "role": SPEAKERS[turn_id % 2],
                    "session": session,
                }
                for turn_id, text in enumerate(lines)
            ]
        dialogues[dial_id] = turns
    return dialogues


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(Path(__file__).parent / "data" / "sample_dialogs.json"))
    parser.add_argument("--dialogues", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(make_dialogues(args.dialogues, args.seed), indent=2) + "\n")
    print(f"wrote {args.dialogues} dialogues to {output}")


if __name__ == "__main__":
    main()
