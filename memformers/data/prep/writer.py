"""Writing the shards of a split: one shard at a time, each committed atomically and recorded for resuming.

`ShardWriter` writes `SPLIT/shard-NNNNNN.tar.tmp`; `commit()` appends the tar trailer, fsyncs, renames it into
place and records it in `.progress/` (its index rows, then its JSON record, written last: the mark that the shard
is done). `load_progress` finds the shards a re-run can reuse (verified by size and sha256), and `finish_split`
writes a split's `index.npy` from the records and returns its manifest entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from memformers.files import fsync_dir, write_json_atomic

from ..format.manifest import INDEX_DTYPE
from ..format.samples import file_sha256, tar_trailer
from .output import PROGRESS_DIR


def shard_name(split: str, shard: int) -> str:
    """Path of a shard relative to the SHARD_DIR."""
    return f"{split}/shard-{shard:06d}.tar"


class ShardWriter:
    """Writes one shard to a temporary file; `commit()` renames it and records it in .progress/."""

    def __init__(self, out: Path, split: str, shard: int) -> None:
        self.out, self.split, self.shard = out, split, shard
        self.path = out / shard_name(split, shard)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.file = open(self.tmp, "wb", buffering=1 << 20)
        self.sha = hashlib.sha256()
        self.size = 0
        self.rows: list[tuple[int, int, int, int, int, int]] = []
        self.segments = self.tokens = self.no_tokens = 0

    def add(self, sample: bytes, tokens: int, segments: int, crc: int) -> None:
        self.rows.append((self.shard, self.size, len(sample), tokens, segments, crc))
        self._write(sample)
        self.tokens += tokens
        self.segments += segments

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha.update(data)
        self.size += len(data)

    def commit(self) -> dict[str, Any]:
        self._write(tar_trailer(self.size))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        record = {
            "path": shard_name(self.split, self.shard),
            "documents": len(self.rows),
            "segments": self.segments,
            "tokens": self.tokens,
            "bytes": self.size,
            "sha256": self.sha.hexdigest(),
            "no_tokens": self.no_tokens,
        }
        base = self.out / PROGRESS_DIR / f"{self.split}-{self.shard:06d}"
        np.save(base.with_suffix(".npy"), np.array(self.rows, dtype=INDEX_DTYPE))
        write_json_atomic(base.with_suffix(".json"), record)  # written last: marks the shard done
        return record

    def abandon(self) -> None:
        self.file.close()


def load_progress(out: Path) -> dict[tuple[str, int], tuple[dict[str, Any], np.ndarray]]:
    """Shards recorded as done whose files are intact: (split, shard) → (record, index rows)."""
    done = {}
    for path in sorted((out / PROGRESS_DIR).glob("*.json")):
        if path.name == "state.json":
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        split, shard = path.stem.rsplit("-", 1)
        tar = out / record["path"]
        rows_path = path.with_suffix(".npy")
        if (
            tar.is_file()
            and rows_path.is_file()
            and tar.stat().st_size == record["bytes"]
            and file_sha256(tar) == record["sha256"]
        ):
            done[(split, int(shard))] = (record, np.load(rows_path, allow_pickle=False))
    return done


def finish_split(out: Path, split: str, records: dict) -> dict[str, Any]:
    """Write the split's index.npy; its manifest entry."""
    shards = sorted((shard, rec, rows) for (s, shard), (rec, rows) in records.items() if s == split)
    index = np.concatenate([rows for _, _, rows in shards]) if shards else np.zeros(0, dtype=INDEX_DTYPE)
    buffer = io.BytesIO()
    np.save(buffer, index.astype(INDEX_DTYPE), allow_pickle=False)
    data = buffer.getvalue()
    (out / split / "index.npy").write_bytes(data)
    entries = [{k: v for k, v in rec.items() if k != "no_tokens"} for _, rec, _ in shards]
    return {
        "documents": int(index.size),
        "segments": int(index["num_segments"].sum()),
        "tokens": int(index["num_tokens"].sum()),
        "index": {"path": f"{split}/index.npy", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
        "shards": entries,
    }
