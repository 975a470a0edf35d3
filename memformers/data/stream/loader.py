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
    epoch          LongTensor [lanes]     the epoch each lane's document was dealt in (its corpus's epoch in a
                                          mixture; the noise depends on it); padding lanes: the stream's epoch
    source         LongTensor [lanes]     the corpus of each lane's document (0 for one corpus), -1 for padding
    bad_documents  list[dict]             damaged documents met in this batch (usually none): {"document", "epoch",
                                          "source", "key" (None if unreadable), "description"}; see below
    loader_cpu_s   float                  CPU seconds the producer spent making this batch (schedule, reads,
                                          assembly, `transform`; pinning too in a thread): held against the step
                                          time, how much of the host the loader takes beside the training loop (in
                                          a thread, mostly under the GIL the loop needs; in a process, not)

Which segment each lane emits when is the schedule of schedule.py, over *global* lanes (rank × lanes + lane): per
epoch the split's documents are visited in a keyed order from (seed, epoch) and dealt to whichever global lane is
free; each lane emits one document's segments in order, then takes the next. Every rank advances the same global
schedule and yields its own lanes, so all ranks yield the same number of batches per epoch, padding lanes marked
invalid. Over an epoch every segment of every document is yielded exactly once, in order, on one lane at a time.
Ranks must pass the same `seed`. Given several SHARD_DIRs with `weights` (and `names`), the loader streams a
mixture (`MixtureSchedule`): each new document comes from the corpus furthest below its weight's share of the
training tokens, each corpus through its own epochs; document numbers run across the corpora in order and keys
are `name/key`. The corpora must share the tokenizer and segment length (`check_mixable`).

The position in the stream is the global `StreamState`: `state_dict()` records it (with what must not change
under it), `load_state_dict()` restores it — also into a loader of another world size or lane count (elastic
resume: the global lanes are re-spread; with the same global lane count the batches are exactly those an
uninterrupted run would yield, otherwise documents in flight wait for a lane or new lanes take new documents,
and still nothing is lost or repeated). Resuming seeks: it reads only the documents the lanes hold, one read
each. A version-1 state (per-rank schedules) is carried over by `legacy.state_from_v1`.

Reading (one seek and read per document, CRC-checked), batch assembly and `transform` run in a
prefetch thread, `prefetch` batches ahead (0: in the calling thread), so the training loop does not
wait on I/O. With `producer="process"` they run in a process of their own (spawned; it makes the same batches
with the same code and sends them as arrays), and the prefetch thread only receives them: the loader's Python
then no longer takes the GIL from a training loop that launches GPU kernels (a thread's work on a batch stalls
such a loop for about as long as the work takes). With `pin_memory` the thread also pins every tensor of a
batch (page-locked host memory, which an accelerator copies from asynchronously); only a process with an
accelerator may ask for it. Iterating
continues from the current position (a loop left early resumes where it stopped); once an iteration has
run to the end of the last epoch, the next one is a new pass from the start, so a loader with `epochs=1`
can be iterated once per evaluation. With `epochs=None` it cycles epochs forever. Shards found missing or of the
wrong size when the loader opens raise ShardError naming them; a document that fails its checksum (or cannot be
read) later is skipped: its lane emits padding for the document's segments, as the schedule dealt them, and the
batch where it is met lists it in `bad_documents` (each time a lane meets it: the consumer counts distinct
documents). The schedule does not change, so every rank keeps the same batches and a resume skips the same
documents.
"""

from __future__ import annotations

import atexit
import hashlib
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..format.manifest import MANIFEST_NAME, read_manifest, split_entry
from ..format.mixing import check_mixable
from ..format.reader import SplitReader
from ..format.samples import Sample
from .legacy import state_from_v1
from .schedule import MixtureSchedule, Schedule, Slot, StreamState

STATE_VERSION = 3  # 3: lanes and waiting documents carry their epoch; mixtures
READABLE_STATES = (1, 2, STATE_VERSION)
_FIXED = ("seed", "split", "segment_length", "corpus_sha256", "sources", "weights")  # what a resumed state must share
_END = object()
PRODUCERS = ("thread", "process")  # where a loader makes its batches (the module docstring)


class SegmentStreamLoader:
    """Iterable over segment batches of one split of a SHARD_DIR for one rank (see module docstring)."""

    def __init__(
        self,
        shard_dir: str | os.PathLike | Sequence[str | os.PathLike],
        split: str = "train",
        *,
        weights: Sequence[float] | None = None,
        names: Sequence[str] | None = None,
        rank: int = 0,
        world_size: int = 1,
        lanes: int,
        segment_length: int,
        seed: int = 0,
        epochs: int | None = 1,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        prefetch: int = 4,
        pin_memory: bool = False,
        producer: str = "thread",
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        if epochs is not None and epochs < 0:
            raise ValueError(f"epochs must be >= 0 or None, got {epochs}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        if producer not in PRODUCERS:
            raise ValueError(f"producer must be one of {PRODUCERS}, got {producer!r}")
        dirs = [Path(shard_dir)] if isinstance(shard_dir, (str, os.PathLike)) else [Path(d) for d in shard_dir]
        self.names = list(names) if names is not None else [d.name for d in dirs]
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(dirs)
        if not len(dirs) == len(self.names) == len(self.weights) >= 1:
            raise ValueError("give one name and one weight per SHARD_DIR")
        manifests = [read_manifest(d) for d in dirs]
        if len(dirs) > 1:  # first: its message names both corpora and everything that differs
            check_mixable(list(zip(self.names, dirs, manifests)))
        for d, manifest in zip(dirs, manifests):
            _check_split(d, manifest, split, segment_length)
        self.shard_dirs, self.shard_dir, self.manifest = dirs, dirs[0], manifests[0]
        self.split = split
        self.rank, self.world_size, self.lanes = rank, world_size, lanes
        self.segment_length, self.seed, self.epochs = segment_length, seed, epochs
        self.transform, self.prefetch, self.pin_memory, self.producer = transform, prefetch, pin_memory, producer
        # what a producer process needs to make this loader again (everything but the open files)
        self._arguments = dict(shard_dir=[str(d) for d in dirs], split=split, weights=self.weights, names=self.names,
                               rank=rank, world_size=world_size, lanes=lanes, segment_length=segment_length,
                               seed=seed, epochs=epochs, transform=transform)  # fmt: skip
        self.producer_pid: int | None = None  # the producer process of the iteration going on (producer="process")
        ids = self.manifest["tokenizer"]["special_ids"]
        self.bos_id, self.eos_id, self.pad_id = ids["bos"], ids["eos"], ids["pad"]
        # the indexes are mapped (shared through the page cache); the shard sizes checked
        self._readers = [SplitReader(d, split, m) for d, m in zip(dirs, manifests)]
        for d, reader in zip(dirs, self._readers):
            if len(reader) == 0:
                raise DataError(f"split {split!r} of {d} has no documents")
        self._schedule = self._make_schedule(epochs)
        self._passes = self._schedule.passes(epochs)
        self._corpus = [hashlib.sha256((d / MANIFEST_NAME).read_bytes()).hexdigest() for d in dirs]
        self._state = self._schedule.fresh(self.global_lanes)
        self._first_lane = rank * lanes
        self.resumed_from: tuple[int, int] | None = None  # (world_size, lanes) of a state loaded from another shape
        # (old global lane, document, epoch) of the documents the resume made wait
        self.displaced: list[tuple[int, int, int]] = []
        self._active = self._finished = False

    def _make_schedule(self, epochs: int | None) -> Schedule:
        """One corpus: its epochs are the stream's. Several: a mixture, each corpus with its own epochs."""
        if len(self._readers) == 1:  # a view of the mapped index: no copy
            return Schedule(self._readers[0].segment_counts, self.seed)
        return MixtureSchedule(
            [reader.segment_counts for reader in self._readers],
            [reader.training_tokens for reader in self._readers],
            self.weights,
            self.seed,
            epochs,
        )

    @property
    def mixture(self) -> bool:
        """Whether this loader mixes several corpora (document keys are then prefixed `name/`)."""
        return len(self._readers) > 1

    @property
    def global_lanes(self) -> int:
        """Lanes over all ranks: world_size × lanes."""
        return self.world_size * self.lanes

    @property
    def num_documents(self) -> int:
        """Documents in the split (all ranks; of every corpus of a mixture)."""
        return sum(len(reader) for reader in self._readers)

    @property
    def stream_state(self) -> StreamState:
        """A snapshot of the global stream position (the next batch to be yielded)."""
        return self._state.copy()

    def passes_done(self) -> list[float]:
        """Per corpus, the passes over its split dealt so far (epoch + the fraction of its order dealt) at the
        position of the next batch: 2.25 is a quarter into the third pass."""
        state = self._state
        if not self.mixture:
            return [state.epoch + state.position / len(self._readers[0])]
        return [epoch + position / len(reader) for (epoch, position, _), reader in zip(state.sources, self._readers)]

    # -- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position of the next batch to be yielded, the shape it was taken with, and what it is only valid
        with (seed, split, segment length, corpus). The same on every rank."""
        state = {
            "version": STATE_VERSION,
            "stream": self._state.as_dict(),
            "world_size": self.world_size,
            "lanes": self.lanes,
            "seed": self.seed,
            "split": self.split,
            "segment_length": self.segment_length,
            "corpus_sha256": self._corpus[0] if not self.mixture else self._corpus,
        }
        if self.mixture:
            state.update(sources=list(self.names), weights=list(self.weights))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the position of `state`, taken by a loader of any world size and lane count (the global
        lanes are re-spread; `resumed_from` then says from which shape and `displaced` which global lanes' documents
        now wait for a lane). ValueError when it was taken with
        another seed, split, segment length or corpus."""
        if self._active:
            raise RuntimeError("load_state_dict() while iterating: call it before the loop, or after it ends")
        if state.get("version") not in READABLE_STATES:
            raise ValueError(f"loader state version {state.get('version')} is not one of {READABLE_STATES}")
        mine = self.state_dict()
        differ = [k for k in _FIXED if state.get(k) != mine.get(k)]
        if differ:
            raise ValueError(
                "cannot resume: the loader state was taken with other "
                + ", ".join(f"{k} ({state.get(k)!r}, now {mine.get(k)!r})" for k in differ)
                + "; resume with the same seed, split, segment length and SHARD_DIR(s) (mixture sources and weights)"
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
                self._readers[0].segment_counts,
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
            self._state, self._finished = self._schedule.fresh(self.global_lanes), False
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
            target = self._run if self.producer == "thread" else self._relay
            thread = threading.Thread(
                target=target, args=(self._state.copy(), items, stop), daemon=True, name="segment-prefetch"
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
        for reader in self._readers:
            reader.close()

    def _run(self, state: StreamState, items: queue.Queue, stop: threading.Event) -> None:
        """Prefetch thread: produce into `items`, then _END or the exception raised."""
        try:
            for item in self._produce(state, stop):
                if not _put(items, item, stop):
                    return
            _put(items, _END, stop)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            _put(items, exc, stop)

    def _relay(self, state: StreamState, items: queue.Queue, stop: threading.Event) -> None:
        """Prefetch thread of `producer="process"`: a process makes the batches from `state` on
        (`_produce_in_process`); this thread turns their arrays into tensors, pins them, and hands them on as `_run`
        does. The process is killed when the iteration stops; if it dies, the iteration raises DataError."""
        context = multiprocessing.get_context("spawn")  # not fork: the trainer's process has threads (and CUDA)
        channel = context.Queue(maxsize=max(1, self.prefetch))
        process = context.Process(target=_produce_in_process, args=(self._arguments, state, channel), daemon=True,
                                  name="segment-producer")  # fmt: skip
        process.start()
        _track_producer(process)
        self.producer_pid = process.pid
        try:
            while not stop.is_set():
                try:
                    kind, payload = channel.get(timeout=0.2)
                except queue.Empty:
                    if not process.is_alive():
                        raise DataError(
                            f"the loader's producer process (pid {process.pid}) exited with code {process.exitcode} "
                            "while making batches (killed? out of memory?); the run resumes from its latest "
                            "checkpoint when restarted"
                        ) from None
                    continue
                if kind == "error":
                    raise payload
                if kind == "end":
                    _put(items, _END, stop)
                    return
                batch, snapshot = payload
                batch = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
                if self.pin_memory:
                    batch = _pinned(batch)
                if not _put(items, (batch, snapshot), stop):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            _put(items, exc, stop)
        finally:
            process.kill()
            process.join()
            _PRODUCERS.discard(process)
            channel.cancel_join_thread()
            channel.close()
            self.producer_pid = None

    def _produce(self, state: StreamState, stop: threading.Event) -> Iterator[tuple[dict[str, Any], StreamState]]:
        """(batch, a snapshot of the position after it) from `state` on (advanced in place)."""
        held: dict[int, tuple[int, Sample]] = {}  # lane -> (document, its sample)
        mine = range(self._first_lane, self._first_lane + self.lanes)
        started = time.thread_time()  # this thread's CPU time: not the time it waits on a full queue
        while (self._passes is None or state.epoch < self._passes) and not stop.is_set():
            slots = self._schedule.next_batch(state, mine)
            if slots is None:
                state.next_epoch()
                continue
            out = self._assemble(slots, held, state.epoch)
            if self.transform is not None:
                out = self.transform(out)
            if self.pin_memory:
                out = _pinned(out)
            snapshot = state.copy()
            out["loader_cpu_s"] = time.thread_time() - started
            yield out, snapshot
            started = time.thread_time()

    def _assemble(self, slots: list[Slot | None], held: dict[int, tuple[int, Sample]], epoch: int) -> dict[str, Any]:
        lanes = self.lanes
        segments: list[np.ndarray | None] = [None] * lanes
        doc_ids = [""] * lanes
        doc_index = np.full(lanes, -1, dtype=np.int64)
        seg_index = np.full(lanes, -1, dtype=np.int64)
        restore = np.zeros(lanes, dtype=bool)
        epochs = np.full(lanes, epoch, dtype=np.int64)
        source = np.full(lanes, -1, dtype=np.int64)
        bad: list[dict[str, Any]] = []
        for lane, slot in enumerate(slots):
            if slot is None:
                continue
            current = held.get(lane)
            if current is None or current[0] != slot.doc:
                current = held[lane] = (slot.doc, *self._read_or_skip(slot, bad))
            _, sample, source[lane], key = current
            if sample is None:  # a damaged document: padding where its segments were dealt
                source[lane] = -1
                continue
            k = slot.segment
            begin = int(sample.ends[k - 1]) if k else 0
            segments[lane] = sample.ids[begin : int(sample.ends[k])]
            doc_ids[lane], doc_index[lane], seg_index[lane], restore[lane] = key, slot.doc, k, slot.restored
            epochs[lane] = slot.epoch
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
            "epoch": torch.from_numpy(epochs),
            "source": torch.from_numpy(source),
            "bad_documents": bad,
        }

    def _read_or_skip(self, slot: Slot, bad: list[dict[str, Any]]) -> tuple[Sample | None, int, str]:
        """`_read` of the slot's document; a damaged one gives no sample and is added to `bad`."""
        try:
            return self._read(slot.doc)
        except (DataError, OSError) as error:
            source, local = self._schedule.source_of(slot.doc) if self.mixture else (0, slot.doc)
            key = self._readers[source].key_at(local)
            if key is not None and self.mixture:
                key = f"{self.names[source]}/{key}"
            where = f"document {slot.doc}" + (f" (key {key})" if key else "")
            bad.append({"document": slot.doc, "epoch": slot.epoch, "source": source, "key": key,
                        "description": f"{where}: {error}"})  # fmt: skip
            return None, source, ""

    def _read(self, doc: int) -> tuple[Sample, int, str]:
        """Document `doc` of the stream: its sample, its corpus and its key (`name/key` in a mixture)."""
        if not self.mixture:
            sample = self._readers[0].read(doc)
            return sample, 0, sample.key
        source, local = self._schedule.source_of(doc)
        sample = self._readers[source].read(local)
        return sample, source, f"{self.names[source]}/{sample.key}"


def _pinned(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with every tensor in page-locked host memory (an accelerator copies from it asynchronously)."""
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


_PRODUCERS: set[Any] = set()  # the producer processes running in this process
_exit_hook_registered = False


def _track_producer(process: Any) -> None:
    """Kill `process` at exit if it still runs: a producer ignores SIGTERM, which multiprocessing's own exit hook
    sends its daemon children before it waits for them (it would wait forever). Registered once a process has
    started, so after multiprocessing's hook: atexit runs the last registered first."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_kill_producers)
        _exit_hook_registered = True
    _PRODUCERS.add(process)


def _kill_producers() -> None:
    for process in list(_PRODUCERS):
        process.kill()


def _produce_in_process(arguments: dict[str, Any], state: StreamState, channel: Any) -> None:
    """The producer process of `producer="process"`: the loader made again from `arguments`, its batches from
    `state` on sent through `channel` as ("batch", (arrays, position after it)), then ("end", None), or
    ("error", exception). It ends with its parent: the trainer decides when it stops, so it ignores the signals
    a scheduler sends to the whole process group (SIGTERM, SIGUSR1, SIGINT: the trainer checkpoints on them)."""
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    torch.set_num_threads(1)  # small operations: a thread of its own is enough, and the node's cores are the GPUs'
    parent = multiprocessing.parent_process()

    def send(message: tuple[str, Any]) -> bool:
        while parent is None or parent.is_alive():
            try:
                channel.put(message, timeout=1.0)
                return True
            except queue.Full:
                continue
        channel.cancel_join_thread()  # nobody reads it any more: exit without flushing
        return False

    try:
        loader = SegmentStreamLoader(**arguments, prefetch=0)
        for batch, snapshot in loader._produce(state, threading.Event()):
            arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            if not send(("batch", (arrays, snapshot))):
                return
        send(("end", None))
    except BaseException as exc:
        send(("error", _sendable(exc)))


def _sendable(exc: BaseException) -> BaseException:
    """`exc` if it pickles (DataError and the like do), else a RuntimeError with its type, message and traceback."""
    try:
        pickle.dumps(exc)
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}")


def _put(items: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless asked to stop; False when stopped."""
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _check_split(shard_dir: Path, manifest: dict[str, Any], split: str, segment_length: int) -> None:
    """The corpus has `split` and was cut into segments of `segment_length`; DataError says what to pass."""
    if segment_length != manifest["segment_length"]:
        raise DataError(
            f"segment_length={segment_length} but the shards in {shard_dir} were cut into segments of "
            f"{manifest['segment_length']} tokens: pass segment_length={manifest['segment_length']}, "
            f"or re-shard the corpus with --segment-length {segment_length}"
        )
    split_entry(manifest, split, shard_dir)
