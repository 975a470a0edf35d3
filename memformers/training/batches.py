"""Segment batches from a loader to the device, a rollout's worth at a time, and the time spent waiting for them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on `device`. The copies do not block the host: the loader pins its batches' memory where
    the device is a GPU (`Runtime.pin_memory`), and a copy from pinned memory is queued like a kernel."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class SegmentFeed:
    """The training loop's side of the loader: the next batches on the device, each first given to `prepare` (on
    the host: e.g. attaching parked memories); `waited`, the seconds spent blocked on the loader so far (what
    `data_wait_share` reports: whether the loader keeps up with the device), and `loader_cpu`, the CPU seconds
    the loader's producer spent making the batches taken so far (what `loader_cpu_share` reports: how much of
    the host the loader takes beside the loop that launches the device's work; in a thread, mostly under the GIL)."""

    def __init__(self, batches: Iterator[dict], device: torch.device, prepare: Callable[[dict], None] | None = None):
        self.batches, self.device, self.prepare = batches, device, prepare
        self.waited = self.loader_cpu = 0.0

    def mark(self) -> tuple[float, float]:
        """Where `waited` and `loader_cpu` stand now (for `shares_since`)."""
        return self.waited, self.loader_cpu

    def shares_since(self, mark: tuple[float, float], elapsed: float) -> dict[str, float]:
        """`data_wait_share` and `loader_cpu_share` of the `elapsed` seconds since `mark`."""
        return {
            "data_wait_share": (self.waited - mark[0]) / elapsed,
            "loader_cpu_share": (self.loader_cpu - mark[1]) / elapsed,
        }

    def take(self, count: int) -> list[dict] | None:
        """The next `count` batches on the device, or None when the data is exhausted (train.epochs reached)."""
        out = []
        for _ in range(count):
            started = time.perf_counter()
            batch = next(self.batches, None)
            self.waited += time.perf_counter() - started
            if batch is None:
                return None
            self.loader_cpu += batch["loader_cpu_s"]
            if self.prepare is not None:
                self.prepare(batch)
            out.append(to_device(batch, self.device))
        return out
