"""Segment batches from a loader to the device, one at a time or a rollout's worth."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def take(
    batches: Iterator[dict], count: int, device: torch.device, prepare: Callable[[dict], None] | None = None
) -> list[dict] | None:
    """The next `count` batches on `device`, each first given to `prepare` (on the host: e.g. attaching parked
    memories), or None when the data is exhausted (train.epochs reached)."""
    out = []
    for _ in range(count):
        batch = next(batches, None)
        if batch is None:
            return None
        if prepare is not None:
            prepare(batch)
        out.append(to_device(batch, device))
    return out
