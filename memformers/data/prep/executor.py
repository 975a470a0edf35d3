"""Running a sharding run's jobs (worker.py): in this process, or in worker processes.

Both executors take jobs with `submit`, hand over the workers' messages one at a time with `next_event` (as
(worker index, message)), and carry a task's `Placement` to the worker waiting for it with `place`.

Worker processes are started with fork where the platform has it (else spawn) and pull jobs from one shared queue,
so a long job never holds up the others; their messages come back on one queue and each waits for placements on
its own pipe. A worker notices within a second that the main process is gone (killed) and exits; the main process
notices within a second that a worker died, and says which.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import queue
import signal
from typing import Any

from .worker import Commit, JobDone, Placement, Wait, Worker, WorkerSetup, serve


class InlineExecutor:
    """Jobs run one after the other in this process (workers=0)."""

    capacity = 1

    def __init__(self, setup: WorkerSetup) -> None:
        self.worker = Worker(setup)
        self.jobs: collections.deque = collections.deque()
        self.running: Any = None
        self.reply: Placement | None = None
        self.placements: dict[int, Placement] = {}

    def submit(self, job: Any) -> None:
        self.jobs.append(job)

    def place(self, worker: int, task: int, placement: Placement) -> None:
        self.placements[task] = placement

    def next_event(self) -> tuple[int, Any]:
        while True:
            if self.running is None:
                self.running, self.reply = self.worker.run(self.jobs.popleft()), None
            try:
                message = self.running.send(self.reply)
            except StopIteration:
                self.running = None
                continue
            self.reply = None
            if isinstance(message, Wait):  # jobs run in plan order here: the task is placed already
                self.reply = self.placements.pop(message.task)
                continue
            if isinstance(message, JobDone):
                self.running = None
            elif isinstance(message, Commit):  # here at once: no thread in this process
                message = message.run()
            return 0, message

    def close(self, failed: bool = False) -> None:
        self.jobs.clear()


class ProcessExecutor:
    """`workers` worker processes (module docstring)."""

    def __init__(self, setup: WorkerSetup, workers: int) -> None:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.capacity = workers + 1  # a job waiting for the next free worker
        self.jobs, self.events = context.Queue(), context.Queue()
        self.pipes, self.processes = [], []
        for index in range(workers):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(
                target=serve,
                args=(index, setup, self.jobs, self.events, receive, os.getpid()),
                name=f"shard-worker-{index}",
                daemon=True,
            )
            process.start()
            receive.close()
            self.pipes.append(send)
            self.processes.append(process)

    def submit(self, job: Any) -> None:
        self.jobs.put(job)

    def place(self, worker: int, task: int, placement: Placement) -> None:
        self.pipes[worker].send((task, placement))

    def next_event(self) -> tuple[int, Any]:
        while True:
            try:
                return self.events.get(timeout=1.0)
            except queue.Empty:
                for index, process in enumerate(self.processes):
                    if process.exitcode is not None:
                        raise RuntimeError(f"sharding worker {index} died ({_exit(process.exitcode)})") from None

    def close(self, failed: bool = False) -> None:
        if not failed:
            for _ in self.processes:
                self.jobs.put(None)
        for process in self.processes:
            if failed:
                process.terminate()
            process.join(timeout=None if not failed else 10)
        self.jobs.close()
        self.events.close()
        self.jobs.cancel_join_thread()


def _exit(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    name = signal.Signals(-code).name
    return f"killed by {name}" + (": out of memory?" if name == "SIGKILL" else "")
