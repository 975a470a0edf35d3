"""The stream schedule over global lanes: which segment each lane emits at each batch. Pure; no I/O.

A run has G = world_size × lanes *global lanes*; rank r holds global lanes r·lanes … r·lanes + lanes − 1. The
schedule is defined over global lanes only, so it does not depend on how they are spread over ranks:

1. Order: epoch e visits the split's D documents in the order of a keyed bijection of [0, D) (`EpochOrder`: a
   4-round Feistel network over the next even power of two, cycle-walking into [0, D)), from (seed, e). Position
   p → document is computed on demand: nothing of size D is built, on any rank.
2. Deal: at every batch, each free global lane, in lane order, takes the next document: first one from the
   *waiting* queue (documents in flight that lost their lane when a run resumed with fewer global lanes; each
   continues at its next segment, with its memory), else the next *new* document. A lane emits its document's
   segments at consecutive batches, then is free again.
3. New documents. One corpus (`Schedule`): the next document of the epoch order; when the order and the waiting
   queue are exhausted, lanes with nothing to take are padding, and the epoch ends after the batch in which the
   last lane emits its last segment (`next_batch` returns None; the caller moves to `state.next_epoch()`).
   A mixture of corpora (`MixtureSchedule`): the corpus whose dealt training tokens, divided by its weight, are
   the fewest (the first such), so each corpus's share of the tokens follows its weight within one document;
   then that corpus's next document of its own epoch order. Each corpus runs through its own epochs (a small one
   repeats); the stream ends when the first corpus would start its pass number `epochs` + 1.
   Every rank advances the same global state, so all ranks yield the same number of batches (DeepSpeed runs
   collectives in lockstep).

Over an epoch every segment of every document is emitted exactly once, in order, on one lane at a time (a
document displaced by a resize continues on another lane, never twice). An in-flight document is identified by
(document, epoch): in a mixture a small corpus can have one document in flight in two of its epochs at once.
The position in the stream is the `StreamState` (epoch, batch, documents dealt, each lane's document, epoch and
first batch, the waiting queue, a mixture's per-corpus epoch, position and tokens): O(G + waiting + corpora)
numbers, independent of D. `StreamState.resize(G')` maps it to another global lane count: lanes below G' keep
their documents; documents of the lanes beyond go to the end of the waiting queue, in lane order; new lanes start
free. With G' = G the continuation is exact.

Cost per batch, on every rank, in the loader's prefetch thread: a few array operations over the G lanes, Python
for each document dealt (a G-th of a document's segment count, vectorised for one corpus) and for each of the
rank's own lanes (`next_batch(state, lanes)`): under 1 ms at G = 16,384 (bench/bench_stream.py).
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


_U64 = np.uint64
_ARRAY_FROM = 16  # documents dealt at once from which the order is computed on arrays (bench/bench_stream.py)


def _mix64_array(x: np.ndarray) -> np.ndarray:
    """`_mix64` of every element of a uint64 array (numpy's uint64 arithmetic wraps as the masks do)."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


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

    def take(self, start: int, count: int) -> np.ndarray:
        """`[self[p] for p in range(start, start + count)]` as an int64 array, computed on arrays (one by one for
        a few: an array operation costs about what the whole network costs on one Python int)."""
        if not 0 <= start <= start + count <= self.n:
            raise IndexError(f"positions [{start}, {start + count}) outside [0, {self.n})")
        if count < _ARRAY_FROM:
            return np.fromiter(map(self.__getitem__, range(start, start + count)), dtype=np.int64, count=count)
        x = self._permute_array(np.arange(start, start + count, dtype=np.uint64))
        walking = np.flatnonzero(x >= _U64(self.n))
        while walking.size:  # cycle walking, for the few that left [0, n)
            x[walking] = self._permute_array(x[walking])
            walking = walking[x[walking] >= _U64(self.n)]
        return x.astype(np.int64)

    def _permute_array(self, x: np.ndarray) -> np.ndarray:
        half, mask = _U64(self.half), _U64(self._mask)
        left, right = x >> half, x & mask
        for key in self._keys:
            left, right = right, left ^ (_mix64_array(_U64(key) ^ right) & mask)
        return (left << half) | right

    def __len__(self) -> int:
        return self.n


def source_seed(seed: int, source: int) -> int:
    """The seed of corpus `source`'s epoch orders in a mixture (corpora of one size get different orders)."""
    return _mix64((seed & _MASK64) ^ _mix64(source + 1))


def _lane_array(values: Sequence[int] | np.ndarray | None = None, *, lanes: int = 0, fill: int = 0) -> np.ndarray:
    """A per-lane int64 array: of `values`, or `lanes` times `fill`."""
    if values is None:
        return np.full(lanes, fill, dtype=np.int64)
    return np.asarray(values, dtype=np.int64).reshape(-1)  # no copy of an int64 array: the callers pass new ones


@dataclass(eq=False)
class StreamState:
    """The position in the stream, over global lanes (see the module docstring). JSON-able via `as_dict`.

    `lane_doc[g]` is the document global lane g holds (FREE if none, or if its last segment has been emitted),
    `lane_epoch[g]` the epoch it was dealt in and `lane_start[g]` the batch of its segment 0 (for a document
    resumed from the waiting queue, the batch it would have started at), so at batch b the lane emits segment
    b - lane_start[g]: int64 arrays of G, so that a batch is a few array operations, not a loop over the lanes.
    `waiting` holds (document, next segment, epoch), first in first out; the first `waiting_taken` of them have
    been taken. `sources` (a mixture only) holds per corpus [epoch, position in that epoch's order, training tokens
    dealt]; one corpus uses `epoch` and `position`. Two states are equal when `as_dict` is.
    """

    epoch: int = 0
    batch: int = 0
    position: int = 0
    lane_doc: np.ndarray = field(default_factory=_lane_array)
    lane_start: np.ndarray = field(default_factory=_lane_array)
    lane_epoch: np.ndarray = field(default_factory=_lane_array)
    waiting: list[tuple[int, int, int]] = field(default_factory=list)
    waiting_taken: int = 0
    sources: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lane_doc, self.lane_start, self.lane_epoch = map(_lane_array, (self.lane_doc, self.lane_start,
                                                                            self.lane_epoch))  # fmt: skip

    @classmethod
    def fresh(cls, lanes: int, epoch: int = 0, sources: int = 0) -> StreamState:
        """The start of epoch `epoch` over `lanes` global lanes (`sources`: corpora of a mixture, 0 for one)."""
        return cls(
            epoch=epoch,
            lane_doc=_lane_array(lanes=lanes, fill=FREE),
            lane_start=_lane_array(lanes=lanes),
            lane_epoch=_lane_array(lanes=lanes, fill=epoch),
            sources=[[0, 0, 0] for _ in range(sources)],
        )

    @property
    def lanes(self) -> int:
        return len(self.lane_doc)

    def next_epoch(self) -> None:
        """Move to the start of the next epoch (every lane free, nothing dealt)."""
        fresh = StreamState.fresh(self.lanes, self.epoch + 1, len(self.sources))
        self.__dict__.update(fresh.__dict__)

    def copy(self) -> StreamState:
        """A snapshot (O(lanes + corpora): the waiting list is shared, never changed in place)."""
        return StreamState(
            self.epoch,
            self.batch,
            self.position,
            self.lane_doc.copy(),
            self.lane_start.copy(),
            self.lane_epoch.copy(),
            self.waiting,
            self.waiting_taken,
            [list(cursor) for cursor in self.sources],
        )

    @property
    def parked(self) -> list[tuple[int, int, int]]:
        """The waiting (document, next segment, epoch) that are in flight (next segment > 0): their memories are
        parked somewhere."""
        return [entry for entry in self.waiting[self.waiting_taken :] if entry[1] > 0]

    def held_beyond(self, lanes: int) -> list[tuple[int, int, int]]:
        """(global lane, document, epoch) of the lanes from `lanes` on that hold a document: what `resize(lanes)`
        makes wait."""
        held = (lanes + np.flatnonzero(self.lane_doc[lanes:] != FREE)).tolist()
        return [(g, int(self.lane_doc[g]), int(self.lane_epoch[g])) for g in held]

    def resize(self, lanes: int) -> StreamState:
        """This state over `lanes` global lanes: nothing lost, nothing repeated (module docstring)."""
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        keep, added = min(lanes, self.lanes), max(0, lanes - self.lanes)
        displaced = [(doc, self.batch - int(self.lane_start[g]), epoch) for g, doc, epoch in self.held_beyond(keep)]
        return StreamState(
            epoch=self.epoch,
            batch=self.batch,
            position=self.position,
            lane_doc=np.concat([self.lane_doc[:keep], _lane_array(lanes=added, fill=FREE)]),
            lane_start=np.concat([self.lane_start[:keep], _lane_array(lanes=added)]),
            lane_epoch=np.concat([self.lane_epoch[:keep], _lane_array(lanes=added, fill=self.epoch)]),
            waiting=[*self.waiting[self.waiting_taken :], *displaced],
            sources=[list(cursor) for cursor in self.sources],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "position": self.position,
            "lane_doc": self.lane_doc.tolist(),
            "lane_start": self.lane_start.tolist(),
            "lane_epoch": self.lane_epoch.tolist(),
            "waiting": [list(w) for w in self.waiting[self.waiting_taken :]],
            "sources": [list(cursor) for cursor in self.sources],
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StreamState) and self.as_dict() == other.as_dict()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamState:
        """The state `as_dict` wrote; also one saved before lanes had epochs (every document was of `epoch`)."""
        epoch = int(d["epoch"])
        lane_doc = [int(x) for x in d["lane_doc"]]
        return cls(
            epoch,
            int(d["batch"]),
            int(d["position"]),
            lane_doc,
            [int(x) for x in d["lane_start"]],
            [int(x) for x in d.get("lane_epoch", [epoch] * len(lane_doc))],
            [(int(w[0]), int(w[1]), int(w[2]) if len(w) > 2 else epoch) for w in d["waiting"]],
            0,
            [[int(x) for x in cursor] for cursor in d.get("sources", [])],
        )


@dataclass(frozen=True)
class Slot:
    """What one lane emits at one batch: segment `segment` of document `doc`, dealt in epoch `epoch`; `restored`:
    the document continues from the waiting queue on this lane (its memory comes from where it was parked, not
    from the lane)."""

    doc: int
    segment: int
    restored: bool = False
    epoch: int = 0


class Schedule:
    """Advances a `StreamState` batch by batch over one split with these segment counts (any 1-D integer array,
    e.g. a memory-mapped view of the index's `num_segments`); one object per loader, shared by nothing."""

    def __init__(self, segment_counts: Sequence[int] | np.ndarray, seed: int) -> None:
        self.counts = np.asarray(segment_counts)  # a memory-mapped index stays mapped: a plain view of it
        self.num_docs = len(segment_counts)
        if self.num_docs < 1:
            raise ValueError("the split has no documents")
        self.seed = seed
        self._order: EpochOrder | None = None
        self._order_epoch = -1

    def fresh(self, lanes: int) -> StreamState:
        """The start of the stream over `lanes` global lanes."""
        return StreamState.fresh(lanes)

    def passes(self, epochs: int | None) -> int | None:
        """How many `StreamState` epochs `epochs` passes over the data are (None: endless)."""
        return epochs

    def order(self, epoch: int) -> EpochOrder:
        if self._order is None or self._order_epoch != epoch:
            self._order, self._order_epoch = EpochOrder(self.num_docs, self.seed, epoch), epoch
        return self._order

    def segment_counts(self, docs: np.ndarray) -> np.ndarray:
        """Segments of each of `docs` (documents of the schedule, an int64 array)."""
        return self.counts[docs].astype(np.int64)

    def next_batch(self, state: StreamState, lanes: range | None = None) -> list[Slot | None] | None:
        """The slots of global lanes `lanes` (None: all of them) at the state's batch, advancing `state` (every
        lane's) past it; None (and `state` unchanged) when the state's epoch has ended: continue with
        `state.next_epoch()`."""
        restored = self._deal(state)
        held = np.flatnonzero(state.lane_doc != FREE)
        if held.size == 0:  # nothing held, nothing to take: nothing was changed either
            return None
        docs = state.lane_doc[held]
        segment = state.batch - state.lane_start[held]
        wanted = range(state.lanes) if lanes is None else lanes
        slots: list[Slot | None] = [None] * len(wanted)
        mine = held[(held >= wanted.start) & (held < wanted.stop)]
        at = np.searchsorted(held, mine)
        for g, doc, k, was_restored, epoch in zip(
            mine.tolist(), docs[at].tolist(), segment[at].tolist(), restored[mine].tolist(),
            state.lane_epoch[mine].tolist(),
        ):  # fmt: skip
            slots[g - wanted.start] = Slot(doc, k, was_restored, epoch)
        state.lane_doc[held[segment + 1 >= self.segment_counts(docs)]] = FREE  # their last segment: free next batch
        state.batch += 1
        return slots

    def new_documents(self, state: StreamState, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(documents, their epochs) that the next `count` free lanes start, in lane order, advancing `state`:
        fewer where the epoch's order runs out (the lanes left over are padding)."""
        count = min(count, self.num_docs - state.position)
        if count <= 0:
            return _lane_array(), _lane_array()
        docs = self.order(state.epoch).take(state.position, count)
        state.position += count
        return docs, _lane_array(lanes=count, fill=state.epoch)

    def _deal(self, state: StreamState) -> np.ndarray:
        """Give every free lane, in lane order, its next document: first the waiting ones, then new ones. Returns
        which lanes continue a document from the waiting queue (`Slot.restored`)."""
        restored = np.zeros(state.lanes, dtype=bool)
        free = np.flatnonzero(state.lane_doc == FREE)
        waiting = state.waiting[state.waiting_taken : state.waiting_taken + free.size]  # rare: after a resize
        for g, (doc, segment, epoch) in zip(free.tolist(), waiting):
            state.lane_doc[g], state.lane_start[g], state.lane_epoch[g] = doc, state.batch - segment, epoch
            restored[g] = segment > 0
        state.waiting_taken += len(waiting)
        free = free[len(waiting) :]
        if free.size:
            docs, epochs = self.new_documents(state, free.size)
            dealt = free[: docs.size]
            state.lane_doc[dealt], state.lane_start[dealt], state.lane_epoch[dealt] = docs, state.batch, epochs
        return restored


class MixtureSchedule(Schedule):
    """The schedule over a weighted mixture of splits (module docstring, 3.): documents are numbered across the
    corpora, corpus s holding [offsets[s], offsets[s] + D_s); `epochs` passes of the first corpus to finish them
    end the stream (None: endless).

    Args:
        segment_counts: per corpus, its documents' segment counts.
        token_counts: per corpus, its documents' training tokens (what the weights share out).
        weights: per corpus, > 0 (normalised here).
    """

    def __init__(
        self,
        segment_counts: Sequence[Sequence[int] | np.ndarray],
        token_counts: Sequence[Sequence[int] | np.ndarray],
        weights: Sequence[float],
        seed: int,
        epochs: int | None,
    ) -> None:
        if not len(segment_counts) == len(token_counts) == len(weights) >= 1:
            raise ValueError("a mixture needs segment counts, token counts and a weight for each of its corpora")
        if any(len(counts) < 1 for counts in segment_counts):
            raise ValueError("every corpus of a mixture needs at least one document")
        if any(not w > 0 for w in weights):
            raise ValueError(f"mixture weights must be > 0, got {list(weights)}")
        self.parts = [np.asarray(counts) for counts in segment_counts]
        self.tokens, self.seed, self.epochs = list(token_counts), seed, epochs
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.offsets = np.cumsum([0] + [len(counts) for counts in segment_counts])
        self.num_docs = int(self.offsets[-1])
        self._orders: dict[int, tuple[int, EpochOrder]] = {}  # corpus -> (epoch, its order)

    def fresh(self, lanes: int) -> StreamState:
        return StreamState.fresh(lanes, sources=len(self.parts))

    def passes(self, epochs: int | None) -> int | None:
        return None if epochs is None else 1  # one stream; the corpora's own epochs end it

    def source_of(self, doc: int) -> tuple[int, int]:
        """(corpus, its document number) of mixture document `doc`."""
        source = int(np.searchsorted(self.offsets, doc, side="right")) - 1
        return source, doc - int(self.offsets[source])

    def segment_counts(self, docs: np.ndarray) -> np.ndarray:
        sources = np.searchsorted(self.offsets, docs, side="right") - 1
        counts = np.empty(docs.size, dtype=np.int64)
        for source, part in enumerate(self.parts):
            of_source = sources == source
            counts[of_source] = part[docs[of_source] - self.offsets[source]]
        return counts

    def source_order(self, source: int, epoch: int) -> EpochOrder:
        cached = self._orders.get(source)
        if cached is None or cached[0] != epoch:
            cached = self._orders[source] = (
                epoch,
                EpochOrder(len(self.parts[source]), source_seed(self.seed, source), epoch),
            )
        return cached[1]

    def new_documents(self, state: StreamState, count: int) -> tuple[np.ndarray, np.ndarray]:
        """One by one: each corpus's share of the tokens so far decides where the next document comes from."""
        dealt = []
        while len(dealt) < count and (new := self.new_document(state)) is not None:
            dealt.append(new)
        docs, epochs = zip(*dealt) if dealt else ((), ())
        return _lane_array(docs), _lane_array(epochs)

    def new_document(self, state: StreamState) -> tuple[int, int] | None:
        """(document, epoch) the next free lane starts, advancing `state`; None when the stream has ended."""
        cursors = state.sources
        source = min(range(len(cursors)), key=lambda s: (cursors[s][2] / self.weights[s], s))
        cursor = cursors[source]  # [epoch, position, tokens]
        if cursor[1] >= len(self.parts[source]):  # this corpus starts its next pass, unless that ends the stream
            if self.epochs is not None and cursor[0] + 1 >= self.epochs:
                return None
            cursor[0], cursor[1] = cursor[0] + 1, 0
        if self.epochs is not None and cursor[0] >= self.epochs:  # epochs=0: nothing at all
            return None
        local = self.source_order(source, cursor[0])[cursor[1]]
        cursor[1] += 1
        cursor[2] += int(self.tokens[source][local])
        return int(self.offsets[source]) + local, cursor[0]
