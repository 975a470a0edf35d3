"""Shared benchmark plumbing: interleaved timing (so machine noise hits both sides alike) and result records.

Every benchmark module exposes `run(quick: bool) -> list[Result]`; `bench/run_all.py` runs them all and rewrites
BENCHMARKS.md. Figures are ratios of two things measured side by side in one run, never absolute timings
compared with another machine.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass
class Result:
    name: str
    value: float
    unit: str
    target: str = ""
    passed: bool | None = None
    detail: dict = field(default_factory=dict)
    command: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each fn, calling them in turn (a, b, a, b, ...) so drift affects all equally."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine() -> str:
    import os

    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )
