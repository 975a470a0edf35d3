"""The inputs of a sharding run cut into tasks, each read by one worker on its own, grouped into works.

A task is one of:

* `LineRange` — the lines of an uncompressed JSON lines file whose first byte lies in bytes [start, end)
  (`_line_start`: a line belongs to the range holding its first byte). A file is cut into ranges of about
  `block_bytes`; nothing is read to plan them. A range learns the number of its first line from the line counts
  of the ranges before it in the file (the scheduler's reply), so ranges are read in parallel. `count_only`
  ranges (the part of a file before a slice's own range) only count lines.
* `WholeInput` — an input read from its start: a `.txt` file (one document), a compressed JSON lines file, a
  JSON array, a Parquet file or a 🤗 dataset.

The tasks, in plan order, read the inputs' records in input order: concatenated, their documents are exactly
those `DocumentReader` yields. A worker is handed a `Work`: a run of consecutive tasks of about `block_bytes` in all,
so that a folder of small files does not cost a message per file.

A task keeps the documents it scanned until it writes them when that is small (a range, a `.txt`); a whole
input otherwise is read twice (scan, then write), so a worker holds one batch of it at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from .sources import Doc, RecordCheck, Source, Tally, read_input, where_of

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
    """An input read from its start (a `.txt`, a compressed or array JSON file, Parquet, a 🤗 dataset)."""

    source: Source
    array: bool = False  # a JSON file holding one array (its records are numbered by index)
    size: int = 0

    @property
    def count_only(self) -> bool:
        return False

    @property
    def key(self) -> str:
        return self.source.location

    @property
    def keeps_documents(self) -> bool:
        return self.source.kind == "text"

    def where(self, number: int, dataset_split: str) -> str:
        return where_of(self.source, number, array=self.array, dataset_split=dataset_split)


Task = LineRange | WholeInput


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
        if start is not None or _is_line_range(source):
            size = source.size
            first, last = (0, size) if start is None else (start, end)
            tasks += [LineRange(source, a, min(a + block_bytes, first), True) for a in range(0, first, block_bytes)]
            tasks += [LineRange(source, a, min(a + block_bytes, last)) for a in range(first, last, block_bytes)]
        else:
            array = source.kind == "json" and source.is_json_array()
            tasks.append(WholeInput(source, array, source.size))
    return tasks


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
        if isinstance(task, WholeInput):
            yield from read_input(
                task.source, self.check, tally, dataset_split=self.dataset_split, dataset_config=self.dataset_config
            )
            return
        with open(task.source.location, "rb", buffering=1 << 20) as f:
            start, end = _line_start(f, task.start), _line_start(f, task.end)
            f.seek(start)
            data = f.read(end - start)
        self.lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
        if task.count_only:
            return
        json_line = self.check.json_line
        for number, line in enumerate(data.split(b"\n"), 1):  # as iterating the file: only b"\n" ends a line
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
