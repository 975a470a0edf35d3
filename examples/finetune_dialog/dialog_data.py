"""Multi-session dialogues as per-lane turn streams, for finetuning MemBART with memory carried from turn to turn.

Input: the reference JSON format — a dict of dialogues, each a list of turns
`{"dial_id", "turn_id", "text", "role", "session"}` in conversation order (turn ids restart at each session).

One *example* per turn k ≥ 1 of a dialogue: the encoder reads the last `context_turns` turns before it as
`role: text` lines, followed by the prompt `role_k:` naming who speaks next; the decoder learns turn k's text.
Everything older than the context window reaches the model only through the memory, which the encoder updates at
every example (so with context_turns=1 every turn passes through the memory exactly once).

`TurnStreams` lays dialogues side by side like the pretraining loader lays documents: one dialogue per lane, its
examples in order, the lane's memory reset at a dialogue's first example; when a dialogue ends the lane takes the
next one; with no dialogue left (finite epochs) it becomes a padding lane (`valid=False`, no target tokens).
This module needs only torch and a tokenizer.
"""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

TURN_KEYS = ("dial_id", "turn_id", "text", "role", "session")


class DialogDataError(ValueError):
    """A problem with the dialogue file, naming where it is."""


def load_dialogues(path: str | Path) -> dict[str, list[dict]]:
    """Read and check a dialogue file; returns {dial_id: turns}, the turns in file order."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DialogDataError(f"dialogue file {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise DialogDataError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    if not isinstance(data, dict) or not data:
        raise DialogDataError(f"{path}: expected a non-empty JSON object {{dial_id: [turn, ...]}}")
    for dial_id, turns in data.items():
        if not isinstance(turns, list) or len(turns) < 2:
            raise DialogDataError(f"{path}: dialogue {dial_id!r} must be a list of at least 2 turns")
        for index, turn in enumerate(turns):
            missing = [key for key in TURN_KEYS if key not in turn] if isinstance(turn, dict) else list(TURN_KEYS)
            if missing:
                raise DialogDataError(
                    f"{path}: dialogue {dial_id!r}, turn #{index}: missing key(s) "
                    f"{', '.join(missing)} (each turn needs {', '.join(TURN_KEYS)})"
                )
            if not isinstance(turn["text"], str) or not isinstance(turn["role"], str):
                raise DialogDataError(f"{path}: dialogue {dial_id!r}, turn #{index}: `text` and `role` must be strings")
    return data


def source_text(turns: list[dict], index: int, context_turns: int, next_role: str | None = None) -> str:
    """What the encoder reads before turn `index`: the last `context_turns` turns, then `next_role:`."""
    window = turns[max(0, index - context_turns) : index]
    role = next_role if next_role is not None else turns[index]["role"]
    return "\n".join([f"{turn['role']}: {turn['text']}" for turn in window] + [f"{role}:"])


def encode_source(tokenizer, text: str, max_len: int) -> list[int]:
    """`<s> … </s>`; a context too long keeps its end (the newest words and the speaker prompt)."""
    body = tokenizer(text, add_special_tokens=False).input_ids[-(max_len - 2) :]
    return [tokenizer.bos_token_id, *body, tokenizer.eos_token_id]


def encode_target(tokenizer, text: str, max_len: int) -> list[int]:
    """`<s> … </s>` as the pretraining targets were; a reply too long keeps its start."""
    body = tokenizer(text, add_special_tokens=False).input_ids[: max_len - 2]
    return [tokenizer.bos_token_id, *body, tokenizer.eos_token_id]


@dataclass
class Example:
    source_ids: list[int]
    labels: list[int]
    dial_id: str
    turn_index: int
    """Position of the target turn in its dialogue (1 = the dialogue's first example)."""


def dialogue_examples(
    turns: list[dict], tokenizer, *, context_turns: int, max_source_len: int, max_target_len: int
) -> list[Example]:
    """The examples of one dialogue, in order: targets are turns 1 … n-1."""
    return [
        Example(
            encode_source(tokenizer, source_text(turns, k, context_turns), max_source_len),
            encode_target(tokenizer, turns[k]["text"], max_target_len),
            str(turns[k]["dial_id"]),
            k,
        )
        for k in range(1, len(turns))
    ]


class TurnStreams:
    """Batches of one example per lane, lanes walking through dialogues in order (see the module docstring).

    Each batch: `input_ids` `[lanes, S]`, `attention_mask` (bool), `labels` `[lanes, L]` (-100 = no loss),
    `resets` `[lanes]` (True at a dialogue's first example, and on padding lanes), `valid` `[lanes]`,
    `dial_ids` (list, "" for padding lanes), `turn_index` `[lanes]` (-1 for padding lanes).

    Args:
        epochs: passes over the dialogues (reshuffled each pass with `seed`); None repeats forever, lanes
            moving straight on to the next pass, so there are no padding lanes.
    """

    def __init__(
        self,
        dialogues: list[list[Example]],
        lanes: int,
        *,
        pad_id: int,
        bos_id: int,
        eos_id: int,
        seed: int = 0,
        epochs: int | None = 1,
        shuffle: bool = True,
    ):
        if not dialogues:
            raise DialogDataError(
                "no dialogues to stream (is the file empty, or was it split over more ranks than it has dialogues?)"
            )
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        self.dialogues, self.lanes, self.epochs, self.shuffle = dialogues, lanes, epochs, shuffle
        self.pad_id, self.bos_id, self.eos_id, self.seed = pad_id, bos_id, eos_id, seed

    def _dialogue_order(self):
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            order = list(range(len(self.dialogues)))
            if self.shuffle:
                random.Random(self.seed * 100_003 + epoch).shuffle(order)
            yield from order
            epoch += 1

    def __iter__(self):
        order = self._dialogue_order()
        queues: list[deque] = [deque() for _ in range(self.lanes)]
        while True:
            step = []
            for queue in queues:
                starts = not queue
                if starts:  # this lane's dialogue is over: take the next one (a reset), if any is left
                    index = next(order, None)
                    if index is not None:
                        queue.extend(self.dialogues[index])
                step.append((queue.popleft(), starts) if queue else (None, True))
            if all(example is None for example, _ in step):
                return
            yield self.collate(step)

    def collate(self, step: list[tuple[Example | None, bool]]) -> dict:
        sources = [ex.source_ids if ex else [self.bos_id, self.eos_id] for ex, _ in step]
        labels = [ex.labels if ex else [] for ex, _ in step]
        width, target_width = max(map(len, sources)), max(1, max(map(len, labels)))
        input_ids = torch.full((len(step), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(step), width), dtype=torch.bool)
        label_ids = torch.full((len(step), target_width), -100, dtype=torch.long)
        for lane, (source, target) in enumerate(zip(sources, labels)):
            input_ids[lane, : len(source)] = torch.tensor(source)
            attention_mask[lane, : len(source)] = True
            label_ids[lane, : len(target)] = torch.tensor(target, dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": label_ids,
            "resets": torch.tensor([starts for _, starts in step]),
            "valid": torch.tensor([ex is not None for ex, _ in step]),
            "dial_ids": [ex.dial_id if ex else "" for ex, _ in step],
            "turn_index": torch.tensor([ex.turn_index if ex else -1 for ex, _ in step]),
        }
