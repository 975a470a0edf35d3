"""The main process's bookkeeping in a sharding run: where each task's documents go, and when a shard is complete.

Placement. Tasks are placed in plan order. Task t's documents of split s take positions P(t, s) onward, P(t, s)
being the documents of s in the tasks before t (those without tokens too): the n-th document of a split goes to
shard n // K, position n % K, as if one process had read the inputs in order. A LineRange's first line follows the
lines of the ranges before it in its file. A task is placed as soon as every task before it has been *scanned*
(read and split: a small part of a worker's work), so workers rarely wait for their placement.

Completion. A task that holds every position of a shard commits it itself. Every other shard is sealed from its
pieces once pieces cover all its positions: K, or for the last shard of a split what is left, known once every
task is placed. A task's scan stops at a bad record; nothing after it is placed, and the task's error (named by
file and line, deterministic whatever the number of workers) ends the run.
"""

from __future__ import annotations

import collections
from typing import Any

from ..errors import DataError
from .tasks import LineRange, Task
from .worker import SPLITS, Piece, Placement, Scanned, SealJob


class Scheduler:
    def __init__(self, tasks: list[Task], docs_per_shard: int, done: dict[tuple[str, int], dict[str, Any]]) -> None:
        self.tasks, self.k = tasks, docs_per_shard
        self.done = {split: frozenset(shard for s, shard in done if s == split) for split in SPLITS}
        self.records: dict[tuple[str, int], dict[str, Any]] = dict(done)
        self.scans: dict[int, Scanned] = {}
        self.placed = 0
        self.stopped = False  # a task's scan met a bad record: nothing after it is placed
        self.next_position = {split: 0 for split in SPLITS}
        self.lines: collections.Counter = collections.Counter()  # lines so far of each LineRange file
        self.placements: dict[int, Placement] = {}
        self.pieces: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
        self.filled: collections.Counter = collections.Counter()
        self.sealing: set[tuple[str, int]] = set()

    @property
    def all_placed(self) -> bool:
        return self.placed == len(self.tasks)

    def scanned(self, scan: Scanned) -> list[tuple[int, Placement]]:
        """Record a task's scan; the placements this makes known (of this task and of later tasks scanned already).
        A task placed already (from the task log of a resumed run) gets its placement again."""
        if scan.task < self.placed:
            known = self.scans[scan.task]
            if (known.positions, known.lines) != (scan.positions, scan.lines):
                raise DataError(
                    f"{self.tasks[scan.task].key} reads differently from the run this one resumes ({known.positions}, "
                    f"{known.lines} lines, now {scan.positions}, {scan.lines} lines): the input changed; re-run "
                    "with --overwrite"
                )
            return [(scan.task, self.placements[scan.task])]
        self.scans.setdefault(scan.task, scan)
        placed = []
        while not self.stopped and self.placed < len(self.tasks) and self.placed in self.scans:
            index = self.placed
            scan, task = self.scans[index], self.tasks[index]
            line_offset = 0
            if isinstance(task, LineRange):
                line_offset = self.lines[task.source.location]
                self.lines[task.source.location] += scan.lines
            first = dict(self.next_position)
            for split in SPLITS:
                self.next_position[split] += scan.positions[split]
            self.placements[index] = Placement(first, line_offset, self._done_in(first, scan.positions))
            placed.append((index, self.placements[index]))
            self.placed += 1
            self.stopped = scan.bad
        return placed

    def _done_in(self, first: dict[str, int], positions: dict[str, int]) -> dict[str, frozenset[int]]:
        """The done shards a task's positions fall in (a resumed run skips their documents)."""
        found = {}
        for split in SPLITS:
            if positions[split] and self.done[split]:
                low, high = first[split] // self.k, (first[split] + positions[split] - 1) // self.k
                found[split] = frozenset(s for s in self.done[split] if low <= s <= high)
        return found

    def fully_done(self, index: int) -> bool:
        """Whether every shard a placed task's documents go to is done (a resumed run need not run it)."""
        placement, scan = self.placements[index], self.scans[index]
        for split in SPLITS:
            n, first = scan.positions[split], placement.first[split]
            if n and len(placement.done.get(split, ())) < (first + n - 1) // self.k - first // self.k + 1:
                return False
        return True

    def totals(self) -> dict[str, int] | None:
        """Documents per split (those without tokens too), once every task is placed."""
        return dict(self.next_position) if self.all_placed else None

    def piece(self, message: Piece) -> list[SealJob]:
        """A task's piece of a shard; the seals this makes ready."""
        key = (message.split, message.shard)
        self.pieces[key].append(message.piece)
        self.filled[key] += message.piece["positions"]
        return self.ready()

    def ready(self) -> list[SealJob]:
        """Seals of the shards whose pieces cover all their positions (call again once every task is placed)."""
        jobs = []
        totals = self.totals()
        for key in [key for key in self.pieces if key not in self.sealing]:
            split, shard = key
            size = self.k
            if totals is not None:
                size = min(self.k, totals[split] - shard * self.k)
            if self.filled[key] == size:
                self.sealing.add(key)
                jobs.append(SealJob(split, shard, tuple(sorted(self.pieces.pop(key), key=lambda p: p["task"]))))
        return jobs

    def recorded(self, split: str, shard: int, record: dict[str, Any]) -> None:
        """A shard committed (by the task that held it whole, or sealed)."""
        self.records[(split, shard)] = record
        self.sealing.discard((split, shard))

    def complete(self) -> bool:
        """Every task placed and every shard of every split recorded."""
        totals = self.totals()
        if totals is None or self.pieces or self.sealing:
            return False
        return all(
            all((split, shard) in self.records for shard in range(-(-totals[split] // self.k))) for split in SPLITS
        )
