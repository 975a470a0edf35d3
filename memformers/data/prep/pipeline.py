"""The sharding pipeline: the inputs (or a slice's parts of them) → tasks → workers → the shards of one folder.

The inputs are cut into tasks (tasks.py: byte ranges of uncompressed JSON lines files, whole other inputs) that
workers (worker.py, in `workers` processes, or in this one with workers=0) read on their own. A worker reads a
task's records, checks them, gives each document its split (blake2b-64 of its UTF-8 text / 2**64 < val_fraction →
val: the same text always lands on the same side), tokenizes, segments, encodes the samples with their CRC-32s and
writes the shards: a shard its task holds whole, hashed and committed by that worker; the others as pieces, sealed
(concatenated, hashed, committed) by whichever worker is free. The main process only keeps the order
(scheduler.py): document n of a split goes to shard n // K, position n % K, whatever the number of workers, so
the shards are byte-identical to one process reading the inputs in order. It reads and writes no document.

`tokenize_into` runs this into a SHARD_DIR or a slice's folder, resuming: the shards recorded in `.progress/`
(checked by size and sha256, in the workers) are kept, and a task whose documents all went to kept shards is not
read again (`.progress/tasks.jsonl` holds each finished task's counts). `write_manifest` finishes a SHARD_DIR. The
entry point, `shard_documents`, is in sharding.py.

Accounting: documents_read = documents_written + sum(skipped by reason), reasons being `empty`,
`bad_record` (sources.py) and `no_tokens` (text the tokenizer maps to no token at all).
"""

from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memformers.files import write_json_atomic

from ..errors import DataError
from ..format.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, TOKENIZER_SUBDIR
from ..tokenizer import load_tokenizer, sentence_end_table, token_dtype, tokenizer_identity, tokenizer_sha256
from .encoding import EncoderSetup
from .executor import InlineExecutor, ProcessExecutor
from .output import PROGRESS_DIR
from .progress import Progress
from .scheduler import Scheduler
from .sources import DocumentReader, ReadStats, RecordCheck, Source
from .tasks import Task, block_size, plan_tasks, plan_work
from .worker import (
    Failed,
    JobDone,
    MergeJob,
    Piece,
    Recorded,
    Scanned,
    TaskDone,
    Verified,
    VerifyJob,
    WorkerSetup,
)
from .writer import PIECES, finish_split, load_progress

SPLIT_RULE = "blake2b-64(utf-8 text) / 2**64 < val_fraction -> val"
TASK_LOG = "tasks.jsonl"  # under PROGRESS_DIR


@dataclass
class Job:
    """The checked arguments of a sharding run, shared by the single-process run, the slices and the merge.

    `state` (settings + inputs fingerprint) is what a resumed or merged run must match.
    """

    out: Path
    tokenizer_name: str
    source_tokenizer: Any
    reader: DocumentReader
    settings: dict[str, Any]
    state: dict[str, Any]
    workers: int
    progress: bool
    block_bytes: int | None

    @property
    def splits(self) -> list[str]:
        return ["train", "val"] if self.settings["val_fraction"] > 0 else ["train"]


def available_cpus() -> int:
    """The CPUs this process may run on (Slurm's and taskset's limits; os.cpu_count() counts the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _check_numbers(segment_length: int, docs_per_shard: int, val_fraction: float, workers: int) -> None:
    if segment_length < 1:
        raise DataError(f"--segment-length must be >= 1, got {segment_length}")
    if docs_per_shard < 1:
        raise DataError(f"--docs-per-shard must be >= 1, got {docs_per_shard}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if workers < 0:
        raise DataError(f"--workers must be >= 0, got {workers}")


def make_job(
    inputs: list[str],
    tokenizer: str | os.PathLike,
    output: str | os.PathLike,
    segment_length: int,
    options: dict[str, Any],
) -> Job:
    """Check the arguments, resolve the inputs, load the tokenizer; the run's settings and state."""
    o = options
    workers = available_cpus() if o["workers"] is None else o["workers"]
    _check_numbers(segment_length, o["docs_per_shard"], o["val_fraction"], workers)
    if o["block_bytes"] is not None and o["block_bytes"] < 1:
        raise DataError(f"--block-bytes must be >= 1, got {o['block_bytes']}")
    reader = DocumentReader(
        list(inputs),
        text_field=o["text_field"],
        id_field=o["id_field"],
        skip_bad_records=o["skip_bad_records"],
        dataset_split=o["dataset_split"],
        dataset_config=o["dataset_config"],
    )
    source_tokenizer = load_tokenizer(tokenizer)
    settings = {
        "segment_length": segment_length,
        "docs_per_shard": o["docs_per_shard"],
        "val_fraction": o["val_fraction"],
        "split_rule": SPLIT_RULE,
        "format_version": FORMAT_VERSION,  # the sentence-end rule that cuts segments changed with it
        "text_field": o["text_field"],
        "id_field": o["id_field"],
        "skip_bad_records": o["skip_bad_records"],
        "dataset_split": o["dataset_split"],
        "dataset_config": o["dataset_config"],
        "tokenizer_sha256": tokenizer_sha256(source_tokenizer),
    }
    state = {"settings": settings, "inputs": reader.fingerprint()}
    name = os.fspath(tokenizer)
    return Job(Path(output), name, source_tokenizer, reader, settings, state, workers, o["progress"], o["block_bytes"])


def copy_tokenizer(job: Job, out: Path) -> Any:
    """Save the tokenizer into `out/tokenizer/` and load that copy (what tokenizes, what the manifest names)."""
    tok_dir = out / TOKENIZER_SUBDIR
    job.source_tokenizer.save_pretrained(str(tok_dir))
    return load_tokenizer(tok_dir)


@dataclass
class Tokenized:
    """What `tokenize_into` wrote: shard records (with the reused ones), positions taken per split, what was read,
    tokens written by this run, the tokenizer copy."""

    records: dict[tuple[str, int], dict[str, Any]]
    reused: int
    positions: dict[str, int]
    stats: ReadStats
    tokens: int
    tokenizer: Any


def tokenize_into(
    job: Job, out: Path, state: dict[str, Any], parts: list[tuple[Source, int | None, int | None]], label: str
) -> Tokenized:
    """Shard `parts` (tasks.plan_tasks) into `out` (created or resumed), recording progress in out/.progress/."""
    for split in job.splits:
        (out / split).mkdir(parents=True, exist_ok=True)
    (out / PROGRESS_DIR / PIECES).mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / PROGRESS_DIR / "state.json", state)
    tok = copy_tokenizer(job, out)  # the copy tokenizes, so the SHARD_DIR holds what made its shards
    candidates = load_progress(out)
    _remove_leftovers(out, job.splits, candidates)
    total = sum(part.size if start is None else end - start for part, start, end in parts)
    block = job.block_bytes or block_size(total, job.workers)
    executor = _executor(job, out, tok)
    failed = True
    try:
        run = _Run(out, plan_tasks(parts, block), block, executor, job.settings["docs_per_shard"])
        result = run.start(candidates, label, job.progress, total)
        failed = False
    finally:
        executor.close(failed)
    return Tokenized(result.records, result.reused, result.positions, result.stats, result.tokens, tok)


def _executor(job: Job, out: Path, tok: Any) -> InlineExecutor | ProcessExecutor:
    """`job.workers` worker processes writing into `out` (none: this process) with the tokenizer copy `tok`."""
    settings = job.settings
    encoder = EncoderSetup(
        tok.backend_tokenizer.to_str(), sentence_end_table(tok), settings["segment_length"], token_dtype(len(tok)).str
    )
    setup = WorkerSetup(
        out=out,
        encoder=encoder,
        check=RecordCheck(settings["text_field"], settings["id_field"], settings["skip_bad_records"]),
        docs_per_shard=settings["docs_per_shard"],
        val_fraction=settings["val_fraction"],
        dataset_split=settings["dataset_split"],
        dataset_config=settings["dataset_config"],
    )
    return ProcessExecutor(setup, job.workers) if job.workers > 0 else InlineExecutor(setup)


def run_merge_jobs(job: Job, tok: Any, jobs: list[MergeJob]) -> dict[tuple[str, int], dict[str, Any]]:
    """The shards of a merge of slices, written by the workers (each job one shard); their records."""
    executor, records, queue, outstanding = _executor(job, job.out, tok), {}, list(jobs), 0
    failed = True
    try:
        while queue or outstanding:
            while queue and outstanding < executor.capacity:
                executor.submit(queue.pop())
                outstanding += 1
            _, message = executor.next_event()
            if isinstance(message, Recorded):
                records[(message.split, message.shard)] = message.record
            elif isinstance(message, JobDone):
                outstanding -= 1
            elif isinstance(message, Failed):
                raise message.error or RuntimeError(f"a sharding worker failed:\n{message.traceback}")
        failed = False
    finally:
        executor.close(failed)
    return records


def _remove_leftovers(out: Path, splits: list[str], kept: dict[tuple[str, int], dict[str, Any]]) -> None:
    """Delete what an interrupted run left that no record vouches for: shards, temporary files, pieces."""
    stale = {p for split in splits for p in (out / split).glob("*.tar")}
    stale -= {out / rec["path"] for rec in kept.values()}
    leftovers = [
        *(p for split in splits for p in (out / split).glob("*.tmp")),
        *(out / PROGRESS_DIR / PIECES).iterdir(),
    ]
    for path in [*stale, *leftovers]:
        path.unlink()


@dataclass
class _Result:
    records: dict[tuple[str, int], dict[str, Any]]
    reused: int
    positions: dict[str, int]
    stats: ReadStats
    tokens: int


class _Run:
    """The main loop of `tokenize_into`: hand works and seals to the executor, the messages to the scheduler."""

    def __init__(self, out: Path, tasks: list[Task], block: int, executor: Any, docs_per_shard: int) -> None:
        self.out, self.tasks, self.block, self.executor, self.k = out, tasks, block, executor, docs_per_shard
        self.log_path = out / PROGRESS_DIR / TASK_LOG
        self.stats: dict[int, ReadStats] = {}
        self.owner: dict[int, int] = {}
        self.queue: collections.deque = collections.deque()
        self.outstanding = 0
        self.tokens = 0

    def start(self, candidates: dict, label: str, progress: bool, total: int) -> _Result:
        done = self.verify(candidates)
        self.scheduler = Scheduler(self.tasks, self.k, done)
        logged = self.logged(done)
        needed = [(i, task) for i, task in enumerate(self.tasks) if i not in logged]
        self.queue.extend(plan_work(needed, self.block))
        reused = sum(self.tasks[i].size for i in logged)
        self.progress = Progress(label, total, progress, reused=reused)
        try:
            self.loop()
        finally:
            self.progress.close()
        stats = ReadStats()
        for index in range(len(self.tasks)):
            stats.update(self.stats[index])
        return _Result(self.scheduler.records, len(done), self.scheduler.totals(), stats, self.tokens)

    def verify(self, candidates: dict) -> dict:
        """The shards of an earlier run that are as recorded (checked in the workers, in parallel)."""
        if not candidates:
            return {}
        for (split, shard), record in candidates.items():
            self.executor.submit(VerifyJob(split, shard, record))
        done, answers = {}, 0
        while answers < 2 * len(candidates):  # a Verified and a JobDone each
            _, message = self.executor.next_event()
            answers += 1
            if isinstance(message, Verified) and message.ok:
                done[(message.split, message.shard)] = candidates[(message.split, message.shard)]
            elif isinstance(message, Failed):
                self.fail(message)
        return done

    def logged(self, done: dict) -> set[int]:
        """Tasks an earlier run finished whose documents all went to kept shards: placed from the task log, not
        read again."""
        if not done or not self.log_path.is_file():
            return set()
        entries = {}
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run
                continue
            entries[entry["key"]] = entry
        skipped = set()
        for index, task in enumerate(self.tasks):
            entry = entries.get(task.key)
            if entry is None:
                break
            self.scheduler.scanned(Scanned(index, entry["positions"], entry["lines"]))
            if not self.scheduler.fully_done(index):
                break
            self.stats[index] = ReadStats.from_dict(entry["stats"])
            skipped.add(index)
        return skipped

    def loop(self) -> None:
        scheduler = self.scheduler
        while self.outstanding or self.queue or not scheduler.complete():
            while self.queue and self.outstanding < self.executor.capacity:
                self.executor.submit(self.queue.popleft())
                self.outstanding += 1
            if not self.outstanding:
                raise RuntimeError("the sharding run has nothing left to do but is not complete")  # a bug
            worker, message = self.executor.next_event()
            self.handle(worker, message)

    def handle(self, worker: int, message: Any) -> None:
        scheduler = self.scheduler
        if isinstance(message, Scanned):
            self.owner[message.task] = worker
            for task, placement in scheduler.scanned(message):
                self.executor.place(self.owner.pop(task, worker), task, placement)
            if scheduler.all_placed:
                self.queue.extendleft(scheduler.ready())
        elif isinstance(message, Piece):
            self.queue.extendleft(scheduler.piece(message))
            self.progress.wrote(message.piece["documents"], message.piece["tokens"])
        elif isinstance(message, Recorded):
            scheduler.recorded(message.split, message.shard, message.record)
            if message.whole:  # a sealed shard's documents were counted with its pieces
                self.progress.wrote(message.record["documents"], message.record["tokens"])
        elif isinstance(message, TaskDone):
            self.task_done(message)
        elif isinstance(message, JobDone):
            self.outstanding -= 1
        elif isinstance(message, Failed):
            self.fail(message)

    def task_done(self, message: TaskDone) -> None:
        self.stats[message.task] = message.stats
        self.tokens += message.tokens
        self.progress.read_bytes(message.size)
        scan, task = self.scheduler.scans[message.task], self.tasks[message.task]
        entry = {"key": task.key, "positions": scan.positions, "lines": scan.lines, "stats": message.stats.as_dict()}
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")

    def fail(self, message: Failed) -> None:
        if message.error is not None:
            raise message.error
        raise RuntimeError(f"a sharding worker failed:\n{message.traceback}")


def read_statistics(stats: ReadStats, records: dict) -> dict[str, Any]:
    """The manifest's `stats`: documents read, written, skipped by reason (no_tokens from the shards), invalid UTF-8."""
    skipped = dict(stats.skipped)
    skipped["no_tokens"] = sum(rec["no_tokens"] for rec in records.values())
    return {
        "documents_read": stats.documents_read,
        "documents_written": sum(rec["documents"] for rec in records.values()),
        "skipped": skipped,
        "invalid_utf8": stats.invalid_utf8,
    }


def check_written(stats: dict[str, Any], examples: list[str]) -> None:
    """DataError when no document at all was written."""
    if stats["documents_written"] == 0:
        raise DataError(
            f"no documents written: all {stats['documents_read']:,} documents read were skipped ({stats['skipped']})"
            + (f"; e.g. {examples[0]}" if examples else "")
        )


def write_manifest(job: Job, tok: Any, records: dict, stats: dict[str, Any]) -> dict[str, Any]:
    """Write each split's index.npy and the SHARD_DIR's manifest.json (last); the manifest."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "segment_length": job.settings["segment_length"],
        "token_dtype": token_dtype(len(tok)).name,
        "tokenizer": {"path": TOKENIZER_SUBDIR, **tokenizer_identity(tok, name=job.tokenizer_name)},
        "settings": job.settings,
        "inputs": job.state["inputs"],
        "splits": {split: finish_split(job.out, split, records) for split in job.splits},
        "stats": stats,
    }
    write_json_atomic(job.out / MANIFEST_NAME, manifest)
    return manifest


def whole_inputs(job: Job) -> list[tuple[Source, int | None, int | None]]:
    """Every input, whole: the parts of a single run."""
    return [(source, None, None) for source in job.reader.sources]
