"""The stream schedule over global lanes: which segment each lane emits at each batch. Pure; no I/O.

A run has G = world_size × lanes *global lanes*; rank r holds global lanes r·lanes … r·lanes + lanes − 1. The
schedule is defined over global lanes only, so it does not depend on how they are spread over ranks:

1. Order: epoch e visits the split's D documents in the order of a keyed bijection of [0, D) (`EpochOrder`: a
   4-round Feistel network over the next even power of two, cycle-walking into [0, D)), from (seed, e). Position
   p → document is computed on demand: nothing of size D is built, on any rank.
2. Deal: at every batch, each free global lane, in lane order, takes the next document: first one from the
   *waiting* queue (documents in flight that lost their lane when a run resumed with fewer global lanes; each
   continues at its next segment, with its memory), else the next document of the epoch order. A lane emits its
   document's segments at consecutive batches, then is free again.
3. Epoch end: when the order and the waiting queue are exhausted, lanes with nothing to take are padding; the
   epoch ends after the batch in which the last lane emits its last segment. Every rank advances the same global
   state, so all ranks yield the same number of batches (DeepSpeed runs collectives in lockstep).

Over an epoch every segment of every document is emitted exactly once, in order, on one lane at a time (a
document displaced by a resize continues on another lane, never twice). The position in the stream is the
`StreamState` (epoch, batch, documents dealt, each lane's document and first batch, the waiting queue): O(G +
waiting) numbers, independent of D. `StreamState.resize(G')` maps it to another global lane count: lanes below
G' keep their documents; documents of the lanes beyond go to the end of the waiting queue, in lane order; new
lanes start free. With G' = G the continuation is exact.

Cost per batch: O(G) Python (a few microseconds per lane) on every rank, in the loader's prefetch thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_MASK64 = (1 << 64) - 1
_ROUNDS = 4
FREE = -1


def _mix64(x: int) -> int:
    """splitmix64's finalizer on a Python int (wrapping to 64 bits)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class EpochOrder:
    """The order of documents 0..n-1 in epoch `epoch` of a run seeded `seed`: `order[p]` is the p-th document.

    A keyed bijection: a Feistel network on [0, 4^h) with 4^h >= n (h half-width bits), whose round function is
    splitmix64 of (round key ^ half), restricted to [0, n) by cycle walking (apply again until the value is below
    n: a bijection of [0, 4^h) restricted this way is a bijection of [0, n); fewer than 4 steps on average).
    """

    def __init__(self, n: int, seed: int, epoch: int) -> None:
        if n < 1:
            raise ValueError(f"an epoch needs at least one document, got {n}")
        self.n = n
        self.half = max(1, ((n - 1).bit_length() + 1) // 2)
        self._mask = (1 << self.half) - 1
        base = _mix64(_mix64(seed & _MASK64) ^ (epoch & _MASK64))
        self._keys = [_mix64(base ^ (round_ + 1)) for round_ in range(_ROUNDS)]

    def _permute(self, x: int) -> int:
        left, right, mask = x >> self.half, x & self._mask, self._mask
        for key in self._keys:
            left, right = right, left ^ (_mix64(key ^ right) & mask)
        return (left << self.half) | right

    def __getitem__(self, position: int) -> int:
        if not 0 <= position < self.n:
            raise IndexError(f"position {position} outside [0, {self.n})")
        x = self._permute(position)
        while x >= self.n:
            x = self._permute(x)
        return x

    def __len__(self) -> int:
        return self.n


@dataclass
class StreamState:
    """The position in the stream, over global lanes (see the module docstring). JSON-able via `as_dict`.

    `lane_doc[g]` is the document global lane g holds (FREE if none, or if its last segment has been emitted) and
    `lane_start[g]` the batch of its segment 0 (for a document resumed from the waiting queue, the batch it would
    have started at), so at batch b the lane emits segment b - lane_start[g]. `waiting` holds (document, next
    segment) pairs, first in first out; the first `waiting_taken` of them have been taken.
    """

    epoch: int = 0
    batch: int = 0
    position: int = 0
    lane_doc: list[int] = field(default_factory=list)
    lane_start: list[int] = field(default_factory=list)
    waiting: list[tuple[int, int]] = field(default_factory=list)
    waiting_taken: int = 0

    @classmethod
    def fresh(cls, lanes: int, epoch: int = 0) -> StreamState:
        return cls(epoch=epoch, lane_doc=[FREE] * lanes, lane_start=[0] * lanes)

    @property
    def lanes(self) -> int:
        return len(self.lane_doc)

    def next_epoch(self) -> None:
        """Move to the start of the next epoch (every lane free, nothing dealt)."""
        self.epoch, self.batch, self.position = self.epoch + 1, 0, 0
        self.lane_doc, self.lane_start, self.waiting, self.waiting_taken = [FREE] * self.lanes, [0] * self.lanes, [], 0

    def copy(self) -> StreamState:
        """A snapshot (O(lanes): the waiting list is shared, never changed in place)."""
        return StreamState(
            self.epoch,
            self.batch,
            self.position,
            list(self.lane_doc),
            list(self.lane_start),
            self.waiting,
            self.waiting_taken,
        )

    @property
    def parked(self) -> list[tuple[int, int]]:
        """The waiting documents that are in flight (next segment > 0): their memories are parked somewhere."""
        return [(doc, segment) for doc, segment in self.waiting[self.waiting_taken :] if segment > 0]

    def held_beyond(self, lanes: int) -> list[tuple[int, int]]:
        """(global lane, document) of the lanes from `lanes` on that hold a document: what `resize(lanes)` makes
        wait."""
        return [(g, doc) for g, doc in enumerate(self.lane_doc) if g >= lanes and doc != FREE]

    def resize(self, lanes: int) -> StreamState:
        """This state over `lanes` global lanes: nothing lost, nothing repeated (module docstring)."""
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        keep = min(lanes, self.lanes)
        displaced = [(doc, self.batch - self.lane_start[g]) for g, doc in self.held_beyond(keep)]
        return StreamState(
            epoch=self.epoch,
            batch=self.batch,
            position=self.position,
            lane_doc=self.lane_doc[:keep] + [FREE] * (lanes - keep),
            lane_start=self.lane_start[:keep] + [0] * (lanes - keep),
            waiting=[*self.waiting[self.waiting_taken :], *displaced],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "position": self.position,
            "lane_doc": list(self.lane_doc),
            "lane_start": list(self.lane_start),
            "waiting": [list(w) for w in self.waiting[self.waiting_taken :]],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamState:
        return cls(
            int(d["epoch"]),
            int(d["batch"]),
            int(d["position"]),
            [int(x) for x in d["lane_doc"]],
            [int(x) for x in d["lane_start"]],
            [(int(a), int(b)) for a, b in d["waiting"]],
        )


@dataclass(frozen=True)
class Slot:
    """What one lane emits at one batch: segment `segment` of document `doc`; `restored`: the document continues
    from the waiting queue on this lane (its memory comes from where it was parked, not from the lane)."""

    doc: int
    segment: int
    restored: bool = False


class Schedule:
    """Advances a `StreamState` batch by batch over a split with these segment counts (any 1-D integer array,
    e.g. a memory-mapped view of the index's `num_segments`); one object per loader, shared by nothing."""

    def __init__(self, segment_counts: Sequence[int] | np.ndarray, seed: int) -> None:
        self.counts = segment_counts
        self.num_docs = len(segment_counts)
        if self.num_docs < 1:
            raise ValueError("the split has no documents")
        self.seed = seed
        self._order: EpochOrder | None = None
        self._order_epoch = -1

    def order(self, epoch: int) -> EpochOrder:
        if self._order is None or self._order_epoch != epoch:
            self._order, self._order_epoch = EpochOrder(self.num_docs, self.seed, epoch), epoch
        return self._order

    def next_batch(self, state: StreamState) -> list[Slot | None] | None:
        """The slots of every global lane at the state's batch, advancing `state` past it; None (and `state`
        unchanged) when the state's epoch has ended: continue with `state.next_epoch()`."""
        slots = self._deal(state)
        if all(slot is None for slot in slots):  # nothing held, nothing to take: nothing was changed either
            return None
        state.batch += 1
        return slots

    def _deal(self, state: StreamState) -> list[Slot | None]:
        order, batch, counts = self.order(state.epoch), state.batch, self.counts
        lane_doc, lane_start, waiting = state.lane_doc, state.lane_start, state.waiting
        slots: list[Slot | None] = []
        for g in range(len(lane_doc)):
            doc, restored = lane_doc[g], False
            if doc == FREE:
                if state.waiting_taken < len(waiting):
                    doc, segment = waiting[state.waiting_taken]
                    state.waiting_taken += 1
                    lane_doc[g], lane_start[g], restored = doc, batch - segment, segment > 0
                elif state.position < order.n:
                    doc = lane_doc[g] = order[state.position]
                    lane_start[g] = batch
                    state.position += 1
                else:
                    slots.append(None)
                    continue
            segment = batch - lane_start[g]
            slots.append(Slot(doc, segment, restored))
            if segment + 1 >= int(counts[doc]):  # its last segment: the lane is free for the next batch
                lane_doc[g] = FREE
        return slots
