"""Loader states of the first stream format (version 1: one schedule per rank), carried into the global-lane stream.

Version 1 shuffled an epoch by sorting splitmix64 keys, dealt every world_size-th document to each rank, and
assigned a rank's documents greedily to its lanes; a position was (epoch, batch). `state_from_v1` rebuilds that
schedule at (epoch, batch) and returns the `StreamState` that continues it without losing or repeating anything:
every lane keeps the document it holds (global lane = rank × lanes + lane, its memory with it), the documents
of the epoch that no lane has started yet wait in the order they would have started, and the epochs after it
follow the global-lane schedule. The segments are the same; which lane takes which waiting document, and so
the batches, differ from what the old code would have produced from there on.
"""

from __future__ import annotations

import heapq

import numpy as np

from .schedule import StreamState

_MASK64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def epoch_order_v1(num_docs: int, seed: int, epoch: int) -> np.ndarray:
    """Version 1's shuffled order of documents 0..num_docs-1 for (seed, epoch)."""
    key = _mix64(_mix64(np.array([seed & _MASK64], dtype=np.uint64)) ^ np.uint64(epoch & _MASK64))
    return np.argsort(_mix64(np.arange(num_docs, dtype=np.uint64) ^ key), kind="stable")


def assign_lanes_v1(counts: np.ndarray, lanes: int) -> tuple[list[int], list[int]]:
    """Version 1's greedy lane assignment: (lane, start batch) of each document, in order."""
    free = [(0, lane) for lane in range(lanes)]
    lane_of, start_of = [], []
    for count in counts.tolist():
        t, lane = free[0]
        lane_of.append(lane)
        start_of.append(t)
        heapq.heapreplace(free, (t + count, lane))
    return lane_of, start_of


def state_from_v1(
    segment_counts: np.ndarray, seed: int, epoch: int, batch: int, world_size: int, lanes: int
) -> StreamState:
    """The global-lane state continuing a version-1 position (module docstring), over world_size × lanes lanes."""
    state = StreamState.fresh(world_size * lanes, epoch)
    if batch == 0:
        return state
    counts = np.asarray(segment_counts, dtype=np.int64)
    order = epoch_order_v1(counts.size, seed, epoch)
    pending: list[tuple[int, int, int, int]] = []  # (start batch, rank, lane, document) not yet started
    for rank in range(world_size):
        docs = order[rank::world_size]
        for doc, lane, start in zip(docs.tolist(), *assign_lanes_v1(counts[docs], lanes)):
            g = rank * lanes + lane
            if start < batch < start + counts[doc]:  # started, with segments left to emit
                state.lane_doc[g], state.lane_start[g] = doc, start
            elif start >= batch:
                pending.append((start, rank, lane, doc))
    state.batch, state.position = batch, counts.size
    state.waiting = [(doc, 0, epoch) for *_, doc in sorted(pending)]
    return state
