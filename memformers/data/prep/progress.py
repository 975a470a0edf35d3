"""The progress of a sharding run on stderr: documents/s, tokens/s, and the share of the input bytes read with an
ETA from it.

On a terminal a bar (tqdm); in a log file (a Slurm job's output) one line every `every` seconds and a last one at
the end, rather than a bar's carriage returns; nothing on a process whose rank (RANK, else SLURM_PROCID) is not 0,
as the trainer shows its bar on rank 0 only. The rates are of this run (a resumed run does not count what it
reused), the share and ETA of all the input (reused bytes count as read).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def rank_zero() -> bool:
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    return not rank.isdigit() or int(rank) == 0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts of a run (documents and tokens written, input bytes read) shown as the module docstring says."""

    def __init__(self, label: str, total_bytes: int, enabled: bool, *, reused: int = 0, every: float = 30.0) -> None:
        """`reused`: input bytes a previous run already made into shards."""
        self.label, self.total, self.reused, self.every = label, total_bytes, reused, every
        self.enabled = enabled and rank_zero()
        self.documents = self.tokens = self.read = 0
        self.started = self.logged = time.monotonic()
        self.bar: Any = None
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_bytes or None, initial=reused, unit="B", unit_scale=True, unit_divisor=1024,
                desc=label, dynamic_ncols=True, mininterval=0.5, smoothing=0.1, file=sys.stderr,
            )  # fmt: skip

    def wrote(self, documents: int, tokens: int) -> None:
        self.documents += documents
        self.tokens += tokens
        self._show()

    def read_bytes(self, nbytes: int) -> None:
        self.read += nbytes
        if self.bar is not None:
            self.bar.update(nbytes)
        self._show()

    def rates(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return f"{self.documents / elapsed:,.0f} docs/s, {self.tokens / elapsed:,.0f} tokens/s"

    def line(self) -> str:
        """What a log line says: share read, counts, rates, ETA."""
        done = self.read + self.reused
        parts = [f"{self.label}:"]
        if self.total:
            parts.append(f"{100 * done / self.total:.1f}% of {self.total / 2**20:,.1f} MiB read,")
        parts.append(f"{self.documents:,} docs, {self.tokens:,} tokens ({self.rates()})")
        elapsed = time.monotonic() - self.started
        if self.total and self.read and done < self.total:
            parts.append(f"ETA {_duration(elapsed * (self.total - done) / self.read)}")
        return " ".join(parts)

    def _show(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(self.rates(), refresh=False)
        elif time.monotonic() - self.logged >= self.every:
            self.logged = time.monotonic()
            print(self.line(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(self.line(), file=sys.stderr, flush=True)
