"""A sharding worker: reads, checks, splits, tokenizes, segments and encodes documents and writes shards.

It runs four kinds of jobs (executor.py hands them over, in a worker process or in the main process):

* `Work` (tasks.py): for each task, a scan — read the task's records, check them, give each document its split
  (`split_of`) — reported as `Scanned` (documents per split, lines). Then, task by task, the worker waits for the
  task's `Placement` (the positions of its first document in each split, the number of lines before it in its
  file, the shards already done: it is nearly always there, the earlier tasks having been scanned long before) and
  tokenizes, encodes and writes its documents batch by batch into their shards: a shard the task holds whole it
  commits (`Commit` → `Recorded`), of the others it reports its `Piece`. Last `TaskDone` (what was read, tokens
  written).
* `SealJob`: a shard from its pieces (writer.seal) → `Commit` → `Recorded`.
* `MergeJob`: a shard of a merge of slices from their samples (writer.remap) → `Commit` → `Recorded`.
* `VerifyJob`: a shard a previous run recorded, checked by size and sha256 → `Verified`.

A job is a generator of these messages; it yields `Wait(task)` where it needs the task's placement, and is sent it.
A `Commit` is run by the worker process's committer thread (in the main process with workers=0), which sends
`Recorded` once the shard is durable: the four fsyncs of a commit then overlap tokenizing instead of stalling it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .encoding import Encoder, EncoderSetup
from .sources import Doc, ReadStats, RecordCheck, RecordError, Tally
from .tasks import Task, TaskReader, Work
from .writer import ShardCommit, ShardPart, SliceRun, remap, seal, verify_shard

SPLITS = ("train", "val")
BATCH_CHARS = 1 << 18  # texts tokenized at once: 256 KiB (paired A/B: 2% less CPU than 1 MiB; the batch stays in cache)


def split_of(utf8: bytes, val_fraction: float) -> str:
    """'val' or 'train' for a document's UTF-8 text: a stable hash, independent of order and run."""
    return "val" if is_val(utf8, val_fraction * 2.0**64) else "train"


def is_val(utf8: bytes, threshold: float) -> bool:
    """`split_of(utf8, f) == "val"` with threshold f * 2**64 (computed once per task, not per document)."""
    return int.from_bytes(hashlib.blake2b(utf8, digest_size=8).digest(), "little") < threshold


# -- messages --------------------------------------------------------------------------------------------------------


@dataclass
class Scanned:
    task: int
    positions: dict[str, int]  # documents per split (those without tokens too)
    lines: int  # lines of a LineRange (the next range's first line follows them)
    bad: bool = False  # a bad record stopped the scan (its error comes once the task is placed)


@dataclass
class Wait:
    task: int


@dataclass
class Placement:
    first: dict[str, int]  # the position in each split of the task's first document there
    line_offset: int  # lines of the file before a LineRange's first line
    done: dict[str, frozenset[int]] = field(default_factory=dict)  # shards of a previous run, kept


@dataclass
class Piece:
    """A task's piece of a shard it does not hold whole (writer.ShardPart.finish)."""

    task: int
    split: str
    shard: int
    piece: dict[str, Any]


@dataclass
class Commit:
    """A shard to commit (a task held it whole, or it was sealed): the worker's committer thread runs it, then
    sends `Recorded` (so that the fsyncs overlap the next documents' tokenizing). Never leaves the worker."""

    split: str
    shard: int
    whole: bool
    pending: ShardCommit

    def run(self) -> Recorded:
        return Recorded(self.split, self.shard, self.whole, self.pending.run())


@dataclass
class Recorded:
    """A shard committed and recorded in .progress/ (`whole`: by the task that held it whole, else sealed)."""

    split: str
    shard: int
    whole: bool
    record: dict[str, Any]


@dataclass
class TaskDone:
    task: int
    stats: ReadStats
    tokens: int
    documents: int
    size: int


@dataclass
class JobDone:
    first: int


@dataclass(frozen=True)
class SealJob:
    split: str
    shard: int
    pieces: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class MergeJob:
    """A shard of a merge of slices, from the slices' samples (writer.remap)."""

    split: str
    shard: int
    runs: tuple[SliceRun, ...]
    positions: int


@dataclass(frozen=True)
class VerifyJob:
    split: str
    shard: int
    record: dict[str, Any]


@dataclass
class Verified:
    split: str
    shard: int
    ok: bool


# -- the worker ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a worker needs, sent to it once."""

    out: Path
    encoder: EncoderSetup
    check: RecordCheck
    docs_per_shard: int
    val_fraction: float
    dataset_split: str
    dataset_config: str | None


@dataclass
class _Scan:
    """A task's scan: its documents (kept, or None: read again to write), their splits (0 train, 1 val), counts."""

    reader: TaskReader
    tally: Tally
    splits: bytearray
    docs: list[Doc] | None
    positions: dict[str, int]
    bad: RecordError | None = None


class Worker:
    def __init__(self, setup: WorkerSetup) -> None:
        self.setup = setup
        self.encoder = Encoder(setup.encoder)

    def run(self, job: Work | SealJob | MergeJob | VerifyJob) -> Iterator[Any]:
        out = self.setup.out
        if isinstance(job, SealJob):
            yield Commit(job.split, job.shard, False, seal(out, job.split, job.shard, list(job.pieces)))
        elif isinstance(job, MergeJob):
            pending = remap(out, job.split, job.shard, self.setup.docs_per_shard, job.runs, job.positions)
            yield Commit(job.split, job.shard, False, pending)
        elif isinstance(job, VerifyJob):
            yield Verified(job.split, job.shard, verify_shard(self.setup.out, job.record))
        else:
            yield from self.run_tasks(job)
        yield JobDone(job.first if isinstance(job, Work) else -1)

    def run_tasks(self, job: Work) -> Iterator[Any]:
        scans = []
        for index, task in enumerate(job.tasks, job.first):
            scan = self.scan(task)
            yield Scanned(index, scan.positions, scan.reader.lines, scan.bad is not None)
            scans.append(scan)
            if scan.bad is not None:
                break
        for index, (task, scan) in enumerate(zip(job.tasks, scans), job.first):
            placement = yield Wait(index)
            if scan.bad is not None:
                raise scan.bad.located(task.where(placement.line_offset + scan.bad.number, self.setup.dataset_split))
            yield from self.write(index, task, scan, placement)

    def scan(self, task: Task) -> _Scan:
        setup = self.setup
        reader = TaskReader(task, setup.check, setup.dataset_split, setup.dataset_config)
        tally, splits, keep = Tally(), bytearray(), task.keeps_documents
        docs: list[Doc] | None = [] if keep else None
        scan = _Scan(reader, tally, splits, docs, {})
        threshold = setup.val_fraction * 2.0**64
        try:
            for doc in reader.documents(tally):
                splits.append(threshold > 0 and is_val(doc.utf8, threshold))
                if keep:
                    docs.append(doc._replace(utf8=b""))  # the bytes were only for the split's hash
        except RecordError as bad:
            scan.bad = bad
        val = sum(splits)
        scan.positions = {"train": len(splits) - val, "val": val}
        return scan

    def write(self, index: int, task: Task, scan: _Scan, placement: Placement) -> Iterator[Any]:
        """Write the task's documents into their shards (reading a whole input again where it was not kept)."""
        writer = _TaskWriter(self, index, scan, placement)
        if scan.docs is not None:
            docs: Iterator[Doc] = iter(scan.docs)
        else:
            docs = scan.reader.documents(Tally())  # the same documents as the scan's, read again
        documents = 0
        for batch in _doc_batches(docs):  # tokenized, encoded and written batch by batch: the ids stay in cache
            yield from writer.add(batch, task)
            documents += len(batch)
        yield from writer.finish()
        stats = ReadStats.of(scan.tally, lambda n: task.where(placement.line_offset + n, self.setup.dataset_split))
        yield TaskDone(index, stats, writer.tokens, documents, task.size)


class _TaskWriter:
    """A task's documents, in order, into the parts of their shards (one open part per split)."""

    def __init__(self, worker: Worker, index: int, scan: _Scan, placement: Placement) -> None:
        self.worker, self.index, self.scan, self.placement = worker, index, scan, placement
        self.out, self.k = worker.setup.out, worker.setup.docs_per_shard
        self.next = dict(placement.first)  # the position of the split's next document
        self.end = {s: placement.first[s] + scan.positions[s] for s in SPLITS}
        self.parts: dict[str, ShardPart] = {}
        self.position = 0  # documents of the task so far
        self.tokens = 0

    def add(self, docs: list[Doc], task: Task) -> Iterator[Piece | Commit]:
        places, todo = [], []
        for i, doc in enumerate(docs):
            split = SPLITS[self.scan.splits[self.position + i]]
            shard, position = divmod(self.next[split], self.k)
            self.next[split] += 1
            if shard not in self.placement.done.get(split, ()):
                places.append((doc, split, shard, position))
                todo.append(i)
        self.position += len(docs)
        encoded = self.worker.encoder.encode([docs[i].text for i in todo])
        line_offset, dataset_split = self.placement.line_offset, self.worker.setup.dataset_split
        for (doc, split, shard, position), enc in zip(places, encoded):
            part = self.parts.get(split)
            if part is None or part.shard != shard:
                if part is not None:
                    yield self._finish(part)
                part = self.parts[split] = self._open(split, shard)
            if enc is None:
                part.add_no_tokens()
                continue
            where = task.where(line_offset + doc.number, dataset_split)
            sample, crc = self.worker.encoder.sample(split, shard, position, enc, doc.doc_id, where)
            part.add(sample, enc.tokens, enc.segments, crc)
            self.tokens += enc.tokens

    def _open(self, split: str, shard: int) -> ShardPart:
        whole = self.placement.first[split] <= shard * self.k and (shard + 1) * self.k <= self.end[split]
        return ShardPart(self.out, split, shard, self.index, whole=whole)

    def _finish(self, part: ShardPart) -> Piece | Commit:
        result = part.finish()
        if part.whole:
            return Commit(part.split, part.shard, True, result)
        return Piece(self.index, part.split, part.shard, result)

    def finish(self) -> Iterator[Piece | Commit]:
        for part in self.parts.values():
            yield self._finish(part)
        self.parts.clear()


def _doc_batches(docs: Iterator[Doc]) -> Iterator[list[Doc]]:
    while True:
        batch, size = [], 0
        for doc in docs:
            batch.append(doc)
            size += len(doc.text)
            if size >= BATCH_CHARS:
                break
        if not batch:
            return
        yield batch


# -- the worker process ----------------------------------------------------------------------------------------------


@dataclass
class Failed:
    """A job failed: a DataError (bad input: the user's to fix) or any other exception's traceback."""

    error: Exception | None
    traceback: str | None = None


def serve(index: int, setup: WorkerSetup, jobs: Any, events: Any, placements: Any, parent: int) -> None:
    """A worker process: run jobs from `jobs` until None, sending (index, message) to `events`; a Wait is answered
    on the `placements` pipe. Exits when the parent process is gone."""
    import gc
    import traceback

    from ..errors import DataError

    gc.freeze()  # what the parent left (modules, its data) is never collected here: no walking, no copied pages
    worker, committer = Worker(setup), _Committer(index, events)
    try:
        while (job := _next_job(jobs, parent)) is not None:
            run, reply = worker.run(job), None
            try:
                while True:
                    message = run.send(reply)
                    reply = None
                    if isinstance(message, Wait):
                        task, reply = _receive(placements, parent)
                        if task != message.task:
                            raise RuntimeError(f"placement of task {task} came while waiting for task {message.task}")
                    elif isinstance(message, (Commit, JobDone)):  # a job is done once its shards are committed
                        committer.queue.put(message)
                    else:
                        events.put((index, message))
            except StopIteration:
                continue
            except DataError as error:
                events.put((index, Failed(error)))
            except BaseException:
                events.put((index, Failed(None, traceback.format_exc())))
            return
    finally:
        committer.close()


class _Committer:
    """A worker process's thread that runs its `Commit`s in order and sends their `Recorded` (or `Failed`); other
    messages it is given it sends in their turn."""

    def __init__(self, index: int, events: Any) -> None:
        import queue
        import threading

        self.index, self.events, self.queue = index, events, queue.SimpleQueue()
        self.thread = threading.Thread(target=self.loop, name="committer", daemon=True)
        self.thread.start()

    def loop(self) -> None:
        import traceback

        while (message := self.queue.get()) is not None:
            try:
                self.events.put((self.index, message.run() if isinstance(message, Commit) else message))
            except BaseException:
                self.events.put((self.index, Failed(None, traceback.format_exc())))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


def _parent_gone(parent: int) -> bool:
    import os

    return os.getppid() != parent


def _next_job(jobs: Any, parent: int) -> Any:
    import queue

    while True:
        try:
            return jobs.get(timeout=1.0)
        except queue.Empty:
            if _parent_gone(parent):
                return None


def _receive(pipe: Any, parent: int) -> Any:
    while not pipe.poll(1.0):
        if _parent_gone(parent):
            raise SystemExit(1)
    return pipe.recv()
