"""`ShardingSummary`: what a sharding run (single, one slice, or the merge) read, wrote and skipped.

Every summary is built from a finished record, a `manifest.json` or a slice's `slice.json` (both hold `stats`
and `splits`), by `ShardingSummary.from_record`: the counts cannot disagree with what is on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..format.manifest import read_manifest
from .sources import ReadStats


@dataclass
class ShardingSummary:
    """What a sharding run read, wrote and skipped; `format()` renders it for the terminal."""

    output: str
    documents_read: int
    documents_written: int
    skipped: dict[str, int]
    invalid_utf8: int
    splits: dict[str, dict[str, int]]
    shards_written: int
    shards_reused: int
    tokens_this_run: int
    seconds: float
    workers: int
    already_complete: bool = False
    label: str = "shard directory"  # what `output` is: the SHARD_DIR, or a slice of one
    ignored_files: list[str] = field(default_factory=list)
    examples: ReadStats = field(default_factory=ReadStats)  # names the first few bad records, empty, invalid UTF-8

    @property
    def reconciles(self) -> bool:
        """documents read = documents written + documents skipped."""
        return self.documents_read == self.documents_written + sum(self.skipped.values())

    @property
    def tokens_per_second(self) -> float:
        """Tokens tokenized and written by this run per second of wall time."""
        return self.tokens_this_run / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_record(
        cls,
        record: dict[str, Any],
        output: str | Path,
        *,
        seconds: float,
        workers: int,
        label: str = "shard directory",
        shards_written: int = 0,
        tokens_this_run: int = 0,
        already_complete: bool = False,
        ignored_files: list[str] | None = None,
        examples: ReadStats | None = None,
    ) -> ShardingSummary:
        """The summary of the work `record` describes; shards not written by this run were reused. `examples`:
        what was read, for the first few bad records, empty documents and invalid UTF-8 it names."""
        stats, splits = record["stats"], split_totals(record["splits"])
        examples = examples or ReadStats()
        return cls(
            output=str(output),
            documents_read=stats["documents_read"],
            documents_written=stats["documents_written"],
            skipped=stats["skipped"],
            invalid_utf8=stats["invalid_utf8"],
            splits=splits,
            shards_written=shards_written,
            shards_reused=sum(s["shards"] for s in splits.values()) - shards_written,
            tokens_this_run=tokens_this_run,
            seconds=seconds,
            workers=workers,
            already_complete=already_complete,
            label=label,
            ignored_files=list(ignored_files or []),
            examples=examples,
        )

    @classmethod
    def of_finished(cls, out: Path, *, seconds: float, workers: int, label: str = "shard directory") -> ShardingSummary:
        """The summary of a finished SHARD_DIR that a run found complete (nothing to do)."""
        return cls.from_record(
            read_manifest(out), out, seconds=seconds, workers=workers, label=label, already_complete=True
        )

    def format(self) -> str:
        lines = [
            f"{self.label}: {self.output}" + ("  (already complete: nothing to do)" if self.already_complete else "")
        ]
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(self.skipped.items()) if v) or "none"
        lines += [
            f"  documents read     {self.documents_read:>14,}",
            f"  documents written  {self.documents_written:>14,}",
            f"  documents skipped  {skipped:>14,}   ({reasons})",
            f"  invalid UTF-8      {self.invalid_utf8:>14,}   documents written with U+FFFD replacements",
        ]
        for split, s in self.splits.items():
            lines.append(
                f"  {split:<6} {s['documents']:>11,} docs {s['segments']:>13,} segments {s['tokens']:>15,} tokens "
                f"in {s['shards']:,} shards"
            )
        lines.append(f"  shards written {self.shards_written:,}, reused from an earlier run {self.shards_reused:,}")
        if self.seconds > 0 and self.tokens_this_run:
            lines.append(
                f"  {self.tokens_this_run:,} tokens in {self.seconds:.1f} s = {self.tokens_per_second:,.0f} tokens/s "
                f"with {self.workers} worker(s)"
            )
        if self.ignored_files:
            lines.append(
                f"  ignored {len(self.ignored_files)} files of unsupported types, e.g. {self.ignored_files[0]}"
            )
        lines += self.examples.example_lines()
        lines.append(
            "  reconciles: read = written + skipped" if self.reconciles else "  WARNING: counts do not reconcile"
        )
        return "\n".join(lines)


def split_totals(splits: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Documents, segments, tokens and shards of each split of a manifest's `splits`."""
    return {
        split: {k: entry[k] for k in ("documents", "segments", "tokens")} | {"shards": len(entry["shards"])}
        for split, entry in splits.items()
    }
