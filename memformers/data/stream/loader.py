"""SegmentStreamLoader: batches of one segment per lane, documents streamed in order on each lane.

Contract (NOTES.md). Each batch is a dict:

    input_ids      LongTensor [lanes, S]  <s> segment </s> then pad; S = longest segment in the batch + 2
    attention_mask BoolTensor [lanes, S]
    resets         BoolTensor [lanes]     True at a document's first segment (and on padding lanes)
    valid          BoolTensor [lanes]     False for padding lanes (input_ids <s></s> + pad)
    doc_ids        list[str]              document keys, "" for padding lanes
    segment_index  LongTensor [lanes]     index of the segment in its document, -1 for padding lanes
    epoch          int

Which segment each lane emits when is the schedule of schedule.py: per epoch the split's documents
are shuffled from (seed, epoch), dealt to ranks disjointly, and each lane of a rank emits one
document's segments in order, then takes the rank's next document; every rank yields the same number
of batches per epoch, padding lanes marked invalid. Over an epoch every segment of every document is
yielded exactly once, in order, on one rank and lane. Ranks must pass the same `seed`.

The position in the stream is (epoch, batch): `state_dict()` records it (with what must not change
under it), `load_state_dict()` restores it, and the next iteration yields exactly the batches an
uninterrupted loader would have (nothing, when it was taken after the last batch). Resuming seeks: it
reads only the documents the lanes hold at that batch, with one read each, not the data before.

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
from .schedule import EpochPlan, plan_epoch

STATE_VERSION = 1
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
        self._reader = SplitReader(shard_dir, split, self.manifest)  # checks index and shard sizes now
        if len(self._reader) == 0:
            raise DataError(f"split {split!r} of {shard_dir} has no documents")
        self._segment_counts = self._reader.segment_counts.astype(np.int64)
        self._corpus = hashlib.sha256((self.shard_dir / MANIFEST_NAME).read_bytes()).hexdigest()
        self._plans: dict[int, EpochPlan] = {}
        self._epoch, self._batch = 0, 0
        self._active = self._finished = False

    # -- schedule ----------------------------------------------------------------------------------

    def plan(self, epoch: int) -> EpochPlan:
        """This rank's schedule for `epoch` (the two most recent epochs asked for stay cached)."""
        plan = self._plans.get(epoch)
        if plan is None:
            plan = plan_epoch(
                self._segment_counts,
                seed=self.seed,
                epoch=epoch,
                rank=self.rank,
                world_size=self.world_size,
                lanes=self.lanes,
            )
            self._plans = {e: p for e, p in self._plans.items() if e == epoch - 1} | {epoch: plan}
        return plan

    def batches_in_epoch(self, epoch: int) -> int:
        """Number of batches in `epoch` (the same on every rank)."""
        return self.plan(epoch).num_batches

    @property
    def num_documents(self) -> int:
        """Documents in the split (all ranks)."""
        return len(self._reader)

    # -- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position of the next batch to be yielded, and the settings it is only valid with."""
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "batch": self._batch,
            "seed": self.seed,
            "world_size": self.world_size,
            "lanes": self.lanes,
            "split": self.split,
            "segment_length": self.segment_length,
            "corpus_sha256": self._corpus,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the position of `state`; raises ValueError when it was taken under other settings."""
        if self._active:
            raise RuntimeError("load_state_dict() while iterating: call it before the loop, or after it ends")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} is not {STATE_VERSION}")
        mine = self.state_dict()
        differ = [
            k
            for k in ("seed", "world_size", "lanes", "split", "segment_length", "corpus_sha256")
            if state[k] != mine[k]
        ]
        if differ:
            raise ValueError(
                "cannot resume exactly: the loader state was taken with other "
                + ", ".join(f"{k} ({state[k]!r}, now {mine[k]!r})" for k in differ)
                + "; resume with the same settings and SHARD_DIR"
            )
        self._epoch, self._batch, self._finished = int(state["epoch"]), int(state["batch"]), False

    # -- iteration -----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._active:
            raise RuntimeError("this loader is already being iterated")
        if self._finished:  # the last iteration ran to the end: this one is a new pass
            self._epoch, self._batch, self._finished = 0, 0, False
        epoch, batch = self._epoch, self._batch
        self._active = True
        try:
            if self.prefetch == 0:
                for item in self._produce(epoch, batch, threading.Event()):
                    self._epoch, self._batch = item[1]
                    yield item[0]
                self._finished = True
                return
            items: queue.Queue = queue.Queue(maxsize=self.prefetch)
            stop = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(epoch, batch, items, stop), daemon=True, name="segment-prefetch"
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
                    self._epoch, self._batch = item[1]
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

    def _run(self, epoch: int, batch: int, items: queue.Queue, stop: threading.Event) -> None:
        """Prefetch thread: produce into `items`, then _END or the exception raised."""
        try:
            for item in self._produce(epoch, batch, stop):
                if not _put(items, item, stop):
                    return
            _put(items, _END, stop)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            _put(items, exc, stop)

    def _produce(
        self, epoch: int, batch: int, stop: threading.Event
    ) -> Iterator[tuple[dict[str, Any], tuple[int, int]]]:
        """(batch, position after it) from (epoch, batch) on."""
        held: dict[int, tuple[int, Sample]] = {}  # lane -> (document, its sample)
        while (self.epochs is None or epoch < self.epochs) and not stop.is_set():
            plan = self.plan(epoch)
            for slots in plan.iter_slots(batch):
                if stop.is_set():
                    return
                out = self._assemble(slots, held, epoch)
                if self.transform is not None:
                    out = self.transform(out)
                batch += 1
                yield out, ((epoch, batch) if batch < plan.num_batches else (epoch + 1, 0))
            epoch, batch = epoch + 1, 0
            held.clear()

    def _assemble(
        self, slots: list[tuple[int, int] | None], held: dict[int, tuple[int, Sample]], epoch: int
    ) -> dict[str, Any]:
        lanes = self.lanes
        segments: list[np.ndarray | None] = [None] * lanes
        doc_ids = [""] * lanes
        seg_index = np.full(lanes, -1, dtype=np.int64)
        for lane, slot in enumerate(slots):
            if slot is None:
                continue
            doc, k = slot
            current = held.get(lane)
            if current is None or current[0] != doc:
                current = held[lane] = (doc, self._reader.read(doc))
            sample = current[1]
            begin = int(sample.ends[k - 1]) if k else 0
            segments[lane] = sample.ids[begin : int(sample.ends[k])]
            doc_ids[lane] = sample.key
            seg_index[lane] = k
        lengths = np.array([0 if s is None else s.size for s in segments], dtype=np.int64)
        width = int(lengths.max()) + 2
        ids = np.full((lanes, width), self.pad_id, dtype=np.int64)
        ids[:, 0] = self.bos_id
        for lane, segment in enumerate(segments):
            if segment is not None:
                ids[lane, 1 : 1 + segment.size] = segment
        ids[np.arange(lanes), lengths + 1] = self.eos_id
        valid = seg_index >= 0
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(np.arange(width)[None, :] < (lengths + 2)[:, None]),
            "resets": torch.from_numpy(seg_index <= 0),
            "valid": torch.from_numpy(valid),
            "doc_ids": doc_ids,
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
