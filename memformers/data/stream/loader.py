"""SegmentStreamLoader: batches of one segment per lane, documents streamed in order on each lane.

Contract (NOTES.md). Each batch is a dict:

    input_ids      LongTensor [lanes, S]  <s> segment </s> then pad; S = longest segment in the batch + 2
    attention_mask BoolTensor [lanes, S]
    resets         BoolTensor [lanes]     True at a document's first segment (and on padding lanes)
    restore        BoolTensor [lanes]     True where a lane continues a document that waited for a lane (after a
                                          resume with fewer global lanes): its memory is the document's parked one
    valid          BoolTensor [lanes]     False for padding lanes (input_ids <s></s> + pad)
    doc_ids        list[str]              document keys, "" for padding lanes
    doc_index      LongTensor [lanes]     document number in the split's index, -1 for padding lanes
    segment_index  LongTensor [lanes]     index of the segment in its document, -1 for padding lanes
    epoch          int

Which segment each lane emits when is the schedule of schedule.py, over *global* lanes (rank × lanes + lane): per
epoch the split's documents are visited in a keyed order from (seed, epoch) and dealt to whichever global lane is
free; each lane emits one document's segments in order, then takes the next. Every rank advances the same global
schedule and yields its own lanes, so all ranks yield the same number of batches per epoch, padding lanes marked
invalid. Over an epoch every segment of every document is yielded exactly once, in order, on one lane at a time.
Ranks must pass the same `seed`.

The position in the stream is the global `StreamState`: `state_dict()` records it (with what must not change
under it), `load_state_dict()` restores it — also into a loader of another world size or lane count (elastic
resume: the global lanes are re-spread; with the same global lane count the batches are exactly those an
uninterrupted run would yield, otherwise documents in flight wait for a lane or new lanes take new documents,
and still nothing is lost or repeated). Resuming seeks: it reads only the documents the lanes hold, one read
each. A version-1 state (per-rank schedules) is carried over by `legacy.state_from_v1`.

Reading (one seek and read per document, CRC-checked), batch assembly and `transform` run in a
prefetch thread, `prefetch` batches ahead (0: in the calling thread), so the training loop does not
wait on I/O. Iterating continues from the current position (a loop left early resumes where it
stopped); once an iteration has run to the end of the last epoch, the next one is a new pass from the
start, so a loader with `epochs=1` can be iterated once per evaluation. With `epochs=None` it cycles
epochs forever. Damaged shards raise ShardError naming the shard.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..format.manifest import MANIFEST_NAME, read_manifest, split_entry
from ..format.reader import SplitReader
from ..format.samples import Sample
from .legacy import state_from_v1
from .schedule import Schedule, Slot, StreamState

STATE_VERSION = 2
_FIXED = ("seed", "split", "segment_length", "corpus_sha256")  # what a resumed state must share
_END = object()


class SegmentStreamLoader:
    """Iterable over segment batches of one split of a SHARD_DIR for one rank (see module docstring)."""

    def __init__(
        self,
        shard_dir: str | os.PathLike,
        split: str = "train",
        *,
        rank: int = 0,
        world_size: int = 1,
        lanes: int,
        segment_length: int,
        seed: int = 0,
        epochs: int | None = 1,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        prefetch: int = 4,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        if epochs is not None and epochs < 0:
            raise ValueError(f"epochs must be >= 0 or None, got {epochs}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.shard_dir = Path(shard_dir)
        self.manifest = read_manifest(shard_dir)
        if segment_length != self.manifest["segment_length"]:
            raise DataError(
                f"segment_length={segment_length} but the shards in {shard_dir} were cut into segments of "
                f"{self.manifest['segment_length']} tokens: pass segment_length={self.manifest['segment_length']}, "
                f"or re-shard the corpus with --segment-length {segment_length}"
            )
        self.split = split
        split_entry(self.manifest, split, shard_dir)
        self.rank, self.world_size, self.lanes = rank, world_size, lanes
        self.segment_length, self.seed, self.epochs = segment_length, seed, epochs
        self.transform, self.prefetch = transform, prefetch
        ids = self.manifest["tokenizer"]["special_ids"]
        self.bos_id, self.eos_id, self.pad_id = ids["bos"], ids["eos"], ids["pad"]
        self._reader = SplitReader(shard_dir, split, self.manifest)  # maps the index, checks shard sizes
        if len(self._reader) == 0:
            raise DataError(f"split {split!r} of {shard_dir} has no documents")
        self._schedule = Schedule(self._reader.segment_counts, seed)  # a view of the mapped index: no copy
        self._corpus = hashlib.sha256((self.shard_dir / MANIFEST_NAME).read_bytes()).hexdigest()
        self._state = StreamState.fresh(self.global_lanes)
        self._first_lane = rank * lanes
        self.resumed_from: tuple[int, int] | None = None  # (world_size, lanes) of a state loaded from another shape
        self.displaced: list[tuple[int, int]] = []  # (old global lane, document) of the documents the resume made wait
        self._active = self._finished = False

    @property
    def global_lanes(self) -> int:
        """Lanes over all ranks: world_size × lanes."""
        return self.world_size * self.lanes

    @property
    def num_documents(self) -> int:
        """Documents in the split (all ranks)."""
        return len(self._reader)

    @property
    def stream_state(self) -> StreamState:
        """A snapshot of the global stream position (the next batch to be yielded)."""
        return self._state.copy()

    # -- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position of the next batch to be yielded, the shape it was taken with, and what it is only valid
        with (seed, split, segment length, corpus). The same on every rank."""
        return {
            "version": STATE_VERSION,
            "stream": self._state.as_dict(),
            "world_size": self.world_size,
            "lanes": self.lanes,
            "seed": self.seed,
            "split": self.split,
            "segment_length": self.segment_length,
            "corpus_sha256": self._corpus,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the position of `state`, taken by a loader of any world size and lane count (the global
        lanes are re-spread; `resumed_from` then says from which shape and `displaced` which global lanes' documents
        now wait for a lane). ValueError when it was taken with
        another seed, split, segment length or corpus."""
        if self._active:
            raise RuntimeError("load_state_dict() while iterating: call it before the loop, or after it ends")
        if state.get("version") not in (1, STATE_VERSION):
            raise ValueError(f"loader state version {state.get('version')} is not 1 or {STATE_VERSION}")
        mine = self.state_dict()
        differ = [k for k in _FIXED if state[k] != mine[k]]
        if differ:
            raise ValueError(
                "cannot resume: the loader state was taken with other "
                + ", ".join(f"{k} ({state[k]!r}, now {mine[k]!r})" for k in differ)
                + "; resume with the same seed, split, segment length and SHARD_DIR"
            )
        stream = self._saved_stream(state)
        shape = (int(state["world_size"]), int(state["lanes"]))
        self.resumed_from = None if shape == (self.world_size, self.lanes) else shape
        self.displaced = stream.held_beyond(self.global_lanes)
        self._state, self._finished = stream.resize(self.global_lanes), False

    def _saved_stream(self, state: dict[str, Any]) -> StreamState:
        """The global position a saved state holds, over the global lanes it was taken with (a version-1 state
        carried over by `legacy.state_from_v1`)."""
        if state["version"] == 1:
            return state_from_v1(
                self._reader.segment_counts,
                self.seed,
                int(state["epoch"]),
                int(state["batch"]),
                int(state["world_size"]),
                int(state["lanes"]),
            )
        return StreamState.from_dict(state["stream"])

    # -- iteration -----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._active:
            raise RuntimeError("this loader is already being iterated")
        if self._finished:  # the last iteration ran to the end: this one is a new pass
            self._state, self._finished = StreamState.fresh(self.global_lanes), False
        self._active = True
        try:
            if self.prefetch == 0:
                for batch, state in self._produce(self._state.copy(), threading.Event()):
                    self._state = state
                    yield batch
                self._finished = True
                return
            items: queue.Queue = queue.Queue(maxsize=self.prefetch)
            stop = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(self._state.copy(), items, stop), daemon=True, name="segment-prefetch"
            )
            thread.start()
            try:
                while True:
                    item = items.get()
                    if item is _END:
                        self._finished = True
                        return
                    if isinstance(item, BaseException):
                        raise item
                    self._state = item[1]
                    yield item[0]
            finally:
                stop.set()
                while thread.is_alive():
                    try:  # unblock a producer waiting on a full queue
                        items.get(timeout=0.05)
                    except queue.Empty:
                        pass
                thread.join()
        finally:
            self._active = False

    def close(self) -> None:
        """Close the shard files (reopened when iterated again)."""
        if self._active:
            raise RuntimeError("close() while iterating")
        self._reader.close()

    def _run(self, state: StreamState, items: queue.Queue, stop: threading.Event) -> None:
        """Prefetch thread: produce into `items`, then _END or the exception raised."""
        try:
            for item in self._produce(state, stop):
                if not _put(items, item, stop):
                    return
            _put(items, _END, stop)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            _put(items, exc, stop)

    def _produce(self, state: StreamState, stop: threading.Event) -> Iterator[tuple[dict[str, Any], StreamState]]:
        """(batch, a snapshot of the position after it) from `state` on (advanced in place)."""
        held: dict[int, tuple[int, Sample]] = {}  # lane -> (document, its sample)
        mine = slice(self._first_lane, self._first_lane + self.lanes)
        while (self.epochs is None or state.epoch < self.epochs) and not stop.is_set():
            slots = self._schedule.next_batch(state)
            if slots is None:
                state.next_epoch()
                held.clear()
                continue
            out = self._assemble(slots[mine], held, state.epoch)
            if self.transform is not None:
                out = self.transform(out)
            yield out, state.copy()

    def _assemble(self, slots: list[Slot | None], held: dict[int, tuple[int, Sample]], epoch: int) -> dict[str, Any]:
        lanes = self.lanes
        segments: list[np.ndarray | None] = [None] * lanes
        doc_ids = [""] * lanes
        doc_index = np.full(lanes, -1, dtype=np.int64)
        seg_index = np.full(lanes, -1, dtype=np.int64)
        restore = np.zeros(lanes, dtype=bool)
        for lane, slot in enumerate(slots):
            if slot is None:
                continue
            current = held.get(lane)
            if current is None or current[0] != slot.doc:
                current = held[lane] = (slot.doc, self._reader.read(slot.doc))
            sample, k = current[1], slot.segment
            begin = int(sample.ends[k - 1]) if k else 0
            segments[lane] = sample.ids[begin : int(sample.ends[k])]
            doc_ids[lane], doc_index[lane], seg_index[lane], restore[lane] = sample.key, slot.doc, k, slot.restored
        lengths = np.array([0 if s is None else s.size for s in segments], dtype=np.int64)
        width = int(lengths.max()) + 2
        ids = np.full((lanes, width), self.pad_id, dtype=np.int64)
        ids[:, 0] = self.bos_id
        for lane, segment in enumerate(segments):
            if segment is not None:
                ids[lane, 1 : 1 + segment.size] = segment
        ids[np.arange(lanes), lengths + 1] = self.eos_id
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(np.arange(width)[None, :] < (lengths + 2)[:, None]),
            "resets": torch.from_numpy(seg_index <= 0),
            "restore": torch.from_numpy(restore),
            "valid": torch.from_numpy(seg_index >= 0),
            "doc_ids": doc_ids,
            "doc_index": torch.from_numpy(doc_index),
            "segment_index": torch.from_numpy(seg_index),
            "epoch": epoch,
        }


def _put(items: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless asked to stop; False when stopped."""
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
