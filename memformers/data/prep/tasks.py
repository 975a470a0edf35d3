"""The inputs of a sharding run cut into tasks, each read by one worker on its own, grouped into works.

A task is one of:

* `LineRange` — the lines of an uncompressed JSON lines file whose first byte lies in bytes [start, end)
  (`_line_start`: a line belongs to the range holding its first byte). A file is cut into ranges of about
  `block_bytes`; nothing is read to plan them. A range learns the number of its first line from the line counts
  of the ranges before it in the file (the scheduler's reply), so ranges are read in parallel. `count_only`
  ranges (the part of a file before a slice's own range) only count lines.
* `WholeInput` — an input read from its start: a compressed JSON lines file, a JSON array, a Parquet file or a 🤗
  dataset.
* `TextFiles` — consecutive `.txt` files (one document each), up to `block_bytes` or MAX_FILES_PER_TASK of them.

The tasks, in plan order, read the inputs' records in input order: concatenated, their documents are exactly
those `DocumentReader` yields. A worker is handed a `Work`: a run of consecutive tasks of about `block_bytes` in all,
so that a folder of small files does not cost a message per file.

A task keeps the documents it scanned until it writes them when that is small (a range, `.txt` files); a whole
input otherwise is read twice (scan, then write), so a worker holds one batch of it at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from .sources import Doc, RecordCheck, Source, Tally, read_input, read_text, where_of

MIN_BLOCK_BYTES = 1 << 20
MAX_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class LineRange:
    """The lines of an uncompressed JSON lines file whose first byte lies in bytes [start, end)."""

    source: Source
    start: int
    end: int
    count_only: bool = False

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def key(self) -> str:
        return f"{self.source.location}@{self.start}-{self.end}{'#' if self.count_only else ''}"

    @property
    def keeps_documents(self) -> bool:
        return True

    def where(self, number: int, dataset_split: str) -> str:
        return where_of(self.source, number)


@dataclass(frozen=True)
class WholeInput:
    """An input read from its start (a compressed or array JSON file, Parquet, a 🤗 dataset)."""

    source: Source
    array: bool = False  # a JSON file holding one array (its records are numbered by index)
    size: int = 0
    count_only = False
    keeps_documents = False  # read again to write: it may be large

    @property
    def key(self) -> str:
        return self.source.location

    def where(self, number: int, dataset_split: str) -> str:
        return where_of(self.source, number, array=self.array, dataset_split=dataset_split)


@dataclass(frozen=True)
class TextFiles:
    """Consecutive `.txt` inputs (one document each; document i is file i): one task for many small files, so that
    the main process handles a message per group, not per file."""

    sources: tuple[Source, ...]
    size: int = 0
    count_only = False
    keeps_documents = True

    @property
    def key(self) -> str:
        return f"{self.sources[0].location}+{len(self.sources)}"

    def where(self, number: int, dataset_split: str) -> str:
        return self.sources[number].location


Task = LineRange | WholeInput | TextFiles
MAX_FILES_PER_TASK = 4096


@dataclass(frozen=True)
class Work:
    """Consecutive tasks handed to one worker (the unit of the job queue); `first` is the plan index of the
    first."""

    first: int
    tasks: tuple[Task, ...]


def block_size(total_bytes: int, workers: int) -> int:
    """Bytes per work: about 4 per worker, within [MIN_BLOCK_BYTES, MAX_BLOCK_BYTES] (larger works hold more shards
    whole, which their worker commits itself; smaller ones balance better). The output does not depend on it."""
    return max(MIN_BLOCK_BYTES, min(MAX_BLOCK_BYTES, total_bytes // max(1, 4 * workers)))


def _is_line_range(source: Source) -> bool:
    return source.kind == "json" and source.compression is None and not source.is_json_array()


def plan_tasks(parts: list[tuple[Source, int | None, int | None]], block_bytes: int) -> list[Task]:
    """The tasks of `parts` in order: (source, None, None) is a whole input, (source, start, end) the lines of an
    uncompressed JSON lines file starting in [start, end) (a slice's part, slices.py); lines before `start` are
    counted by count-only ranges so that line numbers are the file's."""
    tasks: list[Task] = []
    for source, start, end in parts:
        if source.kind == "text":
            last = tasks[-1] if tasks else None
            if isinstance(last, TextFiles) and last.size < block_bytes and len(last.sources) < MAX_FILES_PER_TASK:
                tasks[-1] = TextFiles((*last.sources, source), last.size + source.size)
            else:
                tasks.append(TextFiles((source,), source.size))
        elif start is not None or _is_line_range(source):
            first, last_byte = (0, source.size) if start is None else (start, end)
            tasks += _ranges(source, 0, first, block_bytes, count_only=True)
            tasks += _ranges(source, first, last_byte, block_bytes, count_only=False)
        else:
            array = source.kind == "json" and source.is_json_array()
            tasks.append(WholeInput(source, array, source.size))
    return tasks


def _ranges(source: Source, start: int, end: int, block_bytes: int, *, count_only: bool) -> list[LineRange]:
    return [LineRange(source, a, min(a + block_bytes, end), count_only) for a in range(start, end, block_bytes)]


def plan_work(tasks: list[tuple[int, Task]], block_bytes: int) -> list[Work]:
    """(plan index, task) pairs, in plan order, grouped into works of consecutive tasks of about `block_bytes` (a
    larger task is a work of its own; a gap in the indices, tasks a resumed run skips, ends a work)."""
    works: list[Work] = []
    group: list[Task] = []
    size = first = 0
    for index, task in tasks:
        if group and (size + task.size > block_bytes or index != first + len(group)):
            works.append(Work(first, tuple(group)))
            group, size = [], 0
        if not group:
            first = index
        group.append(task)
        size += task.size
    if group:
        works.append(Work(first, tuple(group)))
    return works


# -- reading a task (worker side) ------------------------------------------------------------------------------------


class TaskReader:
    """The documents of one task, numbered as in their input (a range: from 1 at its first line; the scheduler
    gives the offset); `lines` counts a range's lines once it is read through."""

    def __init__(self, task: Task, check: RecordCheck, dataset_split: str, dataset_config: str | None) -> None:
        self.task, self.check = task, check
        self.dataset_split, self.dataset_config = dataset_split, dataset_config
        self.lines = 0

    def documents(self, tally: Tally) -> Iterator[Doc]:
        """Read the task's records, counting into `tally`; RecordError at a bad record unless skipped."""
        task = self.task
        if isinstance(task, TextFiles):
            for number, source in enumerate(task.sources):
                yield from read_text(source, self.check, tally, number)
        elif isinstance(task, WholeInput):
            yield from read_input(
                task.source, self.check, tally, dataset_split=self.dataset_split, dataset_config=self.dataset_config
            )
        else:
            yield from self._lines(task, tally)

    def _lines(self, task: LineRange, tally: Tally) -> Iterator[Doc]:
        with open(task.source.location, "rb", buffering=1 << 20) as f:
            start, end = _line_start(f, task.start), _line_start(f, task.end)
            f.seek(start)
            data = f.read(end - start)
        self.lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
        if task.count_only:
            return
        json_line, begin, number = self.check.json_line, 0, 0
        while begin < len(data):  # line by line, as iterating the file does (only b"\n" ends a line)
            stop = data.find(b"\n", begin)
            stop = len(data) if stop < 0 else stop
            line, begin, number = data[begin:stop], stop + 1, number + 1
            if line and not line.isspace():  # blank lines are not records
                doc = json_line(line, number, tally)
                if doc is not None:
                    yield doc


def _line_start(f: IO[bytes], offset: int) -> int:
    """The first line start at or after `offset` in the binary file `f`."""
    if offset == 0:
        return 0
    f.seek(offset - 1)
    return offset - 1 + len(f.readline())
