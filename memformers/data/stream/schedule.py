"""The lane schedule: which segment each lane of each rank emits at each batch. Pure; no I/O.

For epoch e the schedule is a pure function of (seed, e, the documents' segment counts, world_size,
lanes), so every rank computes every rank's part of it from the split's index, and a position in the
stream is just (epoch, batch):

1. Shuffle: documents are ordered by a keyed hash, splitmix64 of (seed, epoch, document number);
   the same on every rank, machine and library version.
2. Ranks: rank r takes every world_size-th document of that order, from the r-th (disjoint, and
   balanced to within one document).
3. Lanes: a rank's documents go, in order, to the lane that becomes free first (the lowest lane
   number on ties), starting at the batch where it does; a lane emits a document's segments at
   consecutive batches, then takes the next one. Lanes with nothing left to take are padding.
4. Length: a rank's part ends when its last lane finishes; the epoch's number of batches is the
   maximum over ranks, so all ranks yield the same number of batches (DeepSpeed runs collectives in
   lockstep), the shorter ones padding to the end.

Cost: O(D log lanes) Python work per epoch for D documents in the split (about a second per million
documents), done once per epoch in the loader's prefetch thread.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

_MASK64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def epoch_order(num_docs: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of documents 0..num_docs-1 for (seed, epoch)."""
    key = _mix64(_mix64(np.array([seed & _MASK64], dtype=np.uint64)) ^ np.uint64(epoch & _MASK64))
    keys = _mix64(np.arange(num_docs, dtype=np.uint64) ^ key)
    return np.argsort(keys, kind="stable")


def assign_lanes(counts: Sequence[int] | np.ndarray, lanes: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy lane assignment of documents with `counts` segments, in order.

    Returns (lane of each document, batch of its first segment, number of batches until all finish).
    """
    if lanes < 1:
        raise ValueError(f"lanes must be >= 1, got {lanes}")
    lane = np.empty(len(counts), dtype=np.int64)
    start = np.empty(len(counts), dtype=np.int64)
    free = [(0, ln) for ln in range(lanes)]  # (batch at which the lane is free, lane): a heap
    for i, count in enumerate(np.asarray(counts).tolist()):
        t, ln = free[0]
        lane[i], start[i] = ln, t
        heapq.heapreplace(free, (t + count, ln))
    return lane, start, max(t for t, _ in free)


@dataclass
class EpochPlan:
    """One rank's schedule for one epoch.

    docs/counts/lane/start describe this rank's documents in the order its lanes take them (global
    document numbers, segment counts, lane, batch of the first segment); `num_batches` is the epoch's
    length, the same on every rank.
    """

    epoch: int
    rank: int
    world_size: int
    lanes: int
    num_batches: int
    docs: np.ndarray
    counts: np.ndarray
    lane: np.ndarray
    start: np.ndarray

    def iter_slots(self, start_batch: int = 0) -> Iterator[list[tuple[int, int] | None]]:
        """From batch `start_batch` on: per batch, per lane, (document, segment index) or None (padding)."""
        per_lane = [np.flatnonzero(self.lane == ln) for ln in range(self.lanes)]  # in start order
        starts = [self.start[ix] for ix in per_lane]
        # The document each lane holds at start_batch: the last one starting at or before it.
        pointer = [max(int(np.searchsorted(s, start_batch, side="right")) - 1, 0) for s in starts]
        docs, counts, start = self.docs.tolist(), self.counts.tolist(), self.start.tolist()
        lane_items = [ix.tolist() for ix in per_lane]
        for batch in range(start_batch, self.num_batches):
            slots: list[tuple[int, int] | None] = []
            for ln in range(self.lanes):
                items = lane_items[ln]
                p = pointer[ln]
                while p < len(items) and batch >= start[items[p]] + counts[items[p]]:
                    p += 1
                pointer[ln] = p
                if p < len(items) and batch >= start[items[p]]:
                    i = items[p]
                    slots.append((docs[i], batch - start[i]))
                else:
                    slots.append(None)
            yield slots


def plan_epoch(
    segment_counts: np.ndarray, *, seed: int, epoch: int, rank: int, world_size: int, lanes: int
) -> EpochPlan:
    """The schedule of `rank` for `epoch` (see the module docstring)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    counts = np.asarray(segment_counts, dtype=np.int64)
    if counts.size and counts.min() < 1:
        raise ValueError("every document must have at least one segment")
    order = epoch_order(counts.size, seed, epoch)
    num_batches = 0
    mine = None
    for r in range(world_size):
        docs = order[r::world_size]
        lane, start, length = assign_lanes(counts[docs], lanes)
        num_batches = max(num_batches, length)
        if r == rank:
            mine = (docs, counts[docs], lane, start)
    assert mine is not None
    docs, doc_counts, lane, start = mine
    return EpochPlan(epoch, rank, world_size, lanes, num_batches, docs, doc_counts, lane, start)
