"""`logging.profile_steps`: a torch profiler trace of a few optimizer steps, as torchtitan and GPT-NeoX offer it.

Each rank writes `RUN_DIR/profile/rank-XXXXX-steps-A-B.json` (a Chrome trace: open it in Perfetto or
chrome://tracing; every step is a `step N` range) and `rank-XXXXX-steps-A-B.txt` (the ops that took the most time).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .distributed import Runtime, profiler_activities


class StepProfiler:
    """Profiles the optimizer steps numbered `steps[0]` to `steps[1]` (those this run executes: a run resumed
    inside the range profiles the rest of it). `steps` None: profiles nothing. `logger` (rank 0's) says where the
    trace went."""

    def __init__(self, steps: list[int] | None, run_dir: Path, runtime: Runtime, logger):
        self.first, self.last = steps if steps else (None, None)
        self.dir = Path(run_dir) / "profile"
        self.runtime, self.logger = runtime, logger
        self.profiler: torch.profiler.profile | None = None
        self.started_at = self.profiled_to = None

    @contextmanager
    def step(self, number: int) -> Iterator[None]:
        """Wraps optimizer step `number`: starts the profiler at the range's first step, marks the step in the
        trace, and writes the trace after the range's last step."""
        if self.first is None or not self.first <= number <= self.last:
            yield
            return
        if self.profiler is None:
            self.profiler = torch.profiler.profile(activities=profiler_activities(self.runtime.device))
            self.profiler.start()
            self.started_at = number
        with torch.profiler.record_function(f"step {number}"):
            yield
        self.profiled_to = number
        if number == self.last:
            self.close()

    def close(self) -> None:
        """Stop and write the trace (also for a run that ends inside the range: up to its last step)."""
        if self.profiler is None:
            return
        self.profiler.stop()
        first, last = self.started_at, self.profiled_to
        stem = self.dir / f"rank-{self.runtime.rank:05d}-steps-{first}-{last}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.profiler.export_chrome_trace(str(stem.with_suffix(".json")))
        sort = "self_device_time_total" if self.runtime.device.type == "cuda" else "self_cpu_time_total"
        stem.with_suffix(".txt").write_text(self.profiler.key_averages().table(sort_by=sort, row_limit=40) + "\n")
        self.logger.write(f"profile of steps {first}-{last}: {stem}.json (and .txt, the top ops)")
        self.profiler = None
