"""Writing shards: each shard written once, committed atomically and recorded for resuming.

Shard n of a split holds the split's documents n*K .. n*K+K-1 (K = docs_per_shard). A worker writing a task's
documents knows their positions, so:

* `ShardPart(whole=True)`: the task holds every document of the shard; it writes `SPLIT/shard-NNNNNN.tar.tmp`
  itself, hashing as it writes, and `commit()`s it.
* `ShardPart(whole=False)`: the task holds some of them (the shard spans tasks; a val shard gathers its documents
  from many); it writes them, as they will lie in the shard, to a piece `.progress/pieces/SPLIT-NNNNNN-TTTTTTTT`
  (T: the task), and `seal` concatenates the shard's pieces in task order once all are written.

`commit_shard` (what a `ShardCommit` runs) appends the tar trailer, fsyncs, renames the shard into place and
records it in `.progress/` (its index rows, then its JSON record, written last: the mark that the shard is done).
`load_progress` lists the shards a re-run may reuse and `verify_shard` checks one by size and sha256;
`finish_split` writes a split's `index.npy` from the records (one shard's rows in memory at a time) and returns its
manifest entry. `ShardWriter` writes the shards of a merge of slices (slices.py), sample by sample.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from memformers.files import fsync_dir, write_json_atomic

from ..errors import IncompleteSlicesError, ShardError
from ..format.manifest import INDEX_DTYPE
from ..format.reader import SplitReader
from ..format.samples import file_sha256, key_of, parse_sample_key, rekey, sample_key, tar_trailer
from .output import PROGRESS_DIR

PIECES = "pieces"  # under PROGRESS_DIR
_COPY_CHUNK = 4 << 20


def shard_name(split: str, shard: int) -> str:
    """Path of a shard relative to the SHARD_DIR."""
    return f"{split}/shard-{shard:06d}.tar"


def piece_path(out: Path, split: str, shard: int, task: int) -> Path:
    return out / PROGRESS_DIR / PIECES / f"{split}-{shard:06d}-{task:08d}"


class ShardPart:
    """The samples one task writes into one shard, in order: the whole shard, or its piece of it (module doc)."""

    def __init__(self, out: Path, split: str, shard: int, task: int, *, whole: bool) -> None:
        self.out, self.split, self.shard, self.task, self.whole = out, split, shard, task, whole
        self.path = (
            (out / shard_name(split, shard)).with_suffix(".tar.tmp") if whole else piece_path(out, split, shard, task)
        )
        self.file: IO[bytes] | None = None
        self.sha = hashlib.sha256() if whole else None
        self.size = 0
        self.rows: list[tuple[int, int, int, int, int, int]] = []
        self.positions = self.no_tokens = self.tokens = 0

    def add(self, sample: bytes, tokens: int, segments: int, crc: int) -> None:
        if self.file is None:
            self.file = open(self.path, "wb", buffering=1 << 20)
        self.rows.append((self.shard, self.size, len(sample), tokens, segments, crc))
        self.file.write(sample)
        if self.sha is not None:
            self.sha.update(sample)
        self.size += len(sample)
        self.positions += 1
        self.tokens += tokens

    def add_no_tokens(self) -> None:
        """A document without any token: it takes its position, and writes nothing."""
        self.positions += 1
        self.no_tokens += 1

    def finish(self) -> ShardCommit | dict[str, Any]:
        """A whole shard: what commits it. A piece: close it; its description for `seal`."""
        rows = np.array(self.rows, dtype=INDEX_DTYPE)
        if self.whole:
            if self.file is None:
                self.file = open(self.path, "wb")
            return ShardCommit(self.out, self.split, self.shard, self.file, self.sha, self.size, rows, self.no_tokens)
        if self.file is not None:
            self.file.close()
        return {
            "task": self.task,
            "path": str(self.path) if self.file is not None else None,
            "bytes": self.size,
            "rows": rows.tobytes(),
            "positions": self.positions,
            "no_tokens": self.no_tokens,
            "documents": len(self.rows),
            "tokens": self.tokens,
        }

    def abandon(self) -> None:
        if self.file is not None:
            self.file.close()


@dataclass
class ShardCommit:
    """A shard written to its temporary file, to commit: `run()` (commit_shard, then deleting the pieces it was
    sealed from) returns its record. A worker runs it on a thread of its own (module docstring of worker.py)."""

    out: Path
    split: str
    shard: int
    file: IO[bytes]
    sha: Any
    size: int
    rows: np.ndarray
    no_tokens: int
    pieces: tuple[str, ...] = ()

    def run(self) -> dict[str, Any]:
        args = (self.file, self.sha, self.size, self.rows, self.no_tokens)
        record = commit_shard(self.out, self.split, self.shard, *args)
        for piece in self.pieces:
            os.unlink(piece)
        return record


def commit_shard(
    out: Path, split: str, shard: int, file: IO[bytes], sha: Any, size: int, rows: np.ndarray, no_tokens: int
) -> dict[str, Any]:
    """Finish the shard written to `file` (`size` bytes so far, hashed into `sha`): trailer, fsync, rename into
    place, and its record in .progress/ (rows first, the JSON record last). Returns the record."""
    trailer = tar_trailer(size)
    file.write(trailer)
    sha.update(trailer)
    file.flush()
    os.fsync(file.fileno())
    file.close()
    path = out / shard_name(split, shard)
    os.replace(file.name, path)
    fsync_dir(path.parent)
    record = {
        "path": shard_name(split, shard),
        "documents": int(rows.size),
        "segments": int(rows["num_segments"].sum()),
        "tokens": int(rows["num_tokens"].sum()),
        "bytes": size + len(trailer),
        "sha256": sha.hexdigest(),
        "no_tokens": no_tokens,
    }
    base = out / PROGRESS_DIR / f"{split}-{shard:06d}"
    np.save(base.with_suffix(".npy"), rows)
    write_json_atomic(base.with_suffix(".json"), record)  # written last: marks the shard done
    return record


def seal(out: Path, split: str, shard: int, pieces: list[dict[str, Any]]) -> ShardCommit:
    """Write shard `shard` of `split` from its pieces (`ShardPart.finish()` of each task, in task order); what
    commits it and deletes the pieces."""
    path = out / shard_name(split, shard)
    sha, size, rows = hashlib.sha256(), 0, []
    file = open(path.with_suffix(".tar.tmp"), "wb")
    for piece in pieces:
        piece_rows = np.frombuffer(piece["rows"], dtype=INDEX_DTYPE).copy()
        piece_rows["offset"] += size
        rows.append(piece_rows)
        if piece["path"] is not None:
            with open(piece["path"], "rb") as f:
                while chunk := f.read(_COPY_CHUNK):
                    file.write(chunk)
                    sha.update(chunk)
        size += piece["bytes"]
    no_tokens = sum(piece["no_tokens"] for piece in pieces)
    index = np.concatenate(rows) if rows else np.zeros(0, dtype=INDEX_DTYPE)
    paths = tuple(piece["path"] for piece in pieces if piece["path"] is not None)
    return ShardCommit(out, split, shard, file, sha, size, index, no_tokens, paths)


@dataclass(frozen=True)
class SliceRun:
    """Samples of one slice that go to one shard of a merge: those at positions [first, end) of the split in the
    slice (its folder, and its slice.json's `splits` entry for the split), at position `base` + p in the merge."""

    directory: str
    entry: dict[str, Any]
    first: int
    end: int
    base: int


def remap(out: Path, split: str, shard: int, docs_per_shard: int, runs: tuple[SliceRun, ...], positions: int):
    """Shard `shard` of `split` of a merge of slices (slices.py): the runs' samples in order, each re-keyed to its
    position in the merged split (only the tar headers change), checksummed and hashed; what commits it.
    `positions`: the shard's size, documents without tokens included. IncompleteSlicesError for a damaged slice."""
    file = open((out / shard_name(split, shard)).with_suffix(".tar.tmp"), "wb", buffering=1 << 20)
    sha, size, rows = hashlib.sha256(), 0, []
    for run in runs:
        try:
            samples = list(_slice_samples(run, split, docs_per_shard))
        except (ShardError, ValueError) as error:
            raise IncompleteSlicesError(
                f"{run.directory} is damaged ({error}): delete it, run that slice again, then merge again"
            ) from error
        for position, span, row in samples:
            merged = run.base + position - shard * docs_per_shard
            sample = rekey(span, sample_key(split, shard, merged))
            crc = zlib.crc32(sample)
            rows.append((shard, size, len(sample), int(row["num_tokens"]), int(row["num_segments"]), crc))
            file.write(sample)
            sha.update(sample)
            size += len(sample)
    index = np.array(rows, dtype=INDEX_DTYPE)
    return ShardCommit(out, split, shard, file, sha, size, index, positions - len(rows))


def _slice_samples(run: SliceRun, split: str, docs_per_shard: int):
    """(position in the slice, sample bytes, index row) of the run's samples, in order."""
    reader = SplitReader(run.directory, split, {"splits": {split: run.entry}})
    try:
        shards = reader.index["shard"]
        low = int(np.searchsorted(shards, run.first // docs_per_shard, "left"))
        high = int(np.searchsorted(shards, (run.end - 1) // docs_per_shard, "right"))
        for doc in range(low, high):
            span = reader.read_span(doc)
            prefix, local_shard, position = parse_sample_key(key_of(span))
            position += local_shard * docs_per_shard
            if prefix != split:
                raise ValueError(f"sample {key_of(span)} found in split {split!r}")
            if run.first <= position < run.end:
                yield position, span, reader.index[doc]
    finally:
        reader.close()


def load_progress(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The shards .progress/ records as done, (split, shard) → record (check each with `verify_shard`)."""
    done = {}
    for path in sorted((out / PROGRESS_DIR).glob("*.json")):
        if path.name == "state.json" or not path.with_suffix(".npy").is_file():
            continue
        split, shard = path.stem.rsplit("-", 1)
        done[(split, int(shard))] = json.loads(path.read_text(encoding="utf-8"))
    return done


def verify_shard(out: Path, record: dict[str, Any]) -> bool:
    """Whether a recorded shard is on disk as recorded: size and sha256."""
    tar = out / record["path"]
    return tar.is_file() and tar.stat().st_size == record["bytes"] and file_sha256(tar) == record["sha256"]


def finish_split(out: Path, split: str, records: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """Write the split's index.npy from the shards' rows in .progress/ (in shard order); its manifest entry."""
    shards = sorted((shard, rec) for (s, shard), rec in records.items() if s == split)
    documents = sum(rec["documents"] for _, rec in shards)
    header = io.BytesIO()  # as np.save writes it for the whole index
    descr = np.lib.format.dtype_to_descr(INDEX_DTYPE)
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": (documents,)})
    path, sha = out / split / "index.npy", hashlib.sha256(header.getvalue())
    with open(path, "wb") as f:
        f.write(header.getvalue())
        for shard, _ in shards:
            data = np.load(out / PROGRESS_DIR / f"{split}-{shard:06d}.npy").astype(INDEX_DTYPE).tobytes()
            f.write(data)
            sha.update(data)
    entries = [{k: v for k, v in rec.items() if k != "no_tokens"} for _, rec in shards]
    return {
        "documents": documents,
        "segments": sum(rec["segments"] for _, rec in shards),
        "tokens": sum(rec["tokens"] for _, rec in shards),
        "index": {"path": f"{split}/index.npy", "sha256": sha.hexdigest(), "bytes": path.stat().st_size},
        "shards": entries,
    }


class ShardWriter:
    """Writes one shard sample by sample to a temporary file; `commit()` renames it and records it (a merge)."""

    def __init__(self, out: Path, split: str, shard: int) -> None:
        self.out, self.split, self.shard = out, split, shard
        self.path = out / shard_name(split, shard)
        self.file = open(self.path.with_suffix(".tar.tmp"), "wb", buffering=1 << 20)
        self.sha = hashlib.sha256()
        self.size = 0
        self.rows: list[tuple[int, int, int, int, int, int]] = []
        self.no_tokens = 0

    def add(self, sample: bytes, tokens: int, segments: int, crc: int) -> None:
        self.rows.append((self.shard, self.size, len(sample), tokens, segments, crc))
        self.file.write(sample)
        self.sha.update(sample)
        self.size += len(sample)

    def commit(self) -> dict[str, Any]:
        rows = np.array(self.rows, dtype=INDEX_DTYPE)
        return ShardCommit(self.out, self.split, self.shard, self.file, self.sha, self.size, rows, self.no_tokens).run()
