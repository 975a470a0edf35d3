"""Verifying a SHARD_DIR against its manifest, and corpus statistics (`data_prep/inspect_shards.py`).

Each shard is checked for: presence, size and sha256 as in the manifest; a readable tar (read with the
standard `tarfile` module, independently of the loader's reader) whose samples each have the three
members of the sample format (format/samples.py) with decodable arrays, segment ends that partition the ids
into segments of 1..segment_length tokens, and ids inside the vocabulary; document, segment and token
counts as in the manifest; and agreement with the split's index.npy (byte spans, counts, CRC-32). One
shard at a time is read into memory; segment lengths are kept as histograms.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..format.manifest import INDEX_DTYPE, read_manifest
from ..format.samples import MEMBER_EXTS, TAR_BLOCK, parse_npy


@dataclass
class ShardCheck:
    """The result of checking one shard: problems (empty when good) and what it holds."""

    path: str
    problems: list[str] = field(default_factory=list)
    doc_tokens: list[int] = field(default_factory=list)
    doc_segments: list[int] = field(default_factory=list)
    segment_lengths: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))  # histogram
    first_sample: tuple[str, np.ndarray, np.ndarray, dict[str, Any]] | None = None  # key, ids, ends, meta

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class DirCheck:
    """All shards' checks, per split, plus problems of the directory itself (index files)."""

    shard_dir: str
    manifest: dict[str, Any]
    shards: dict[str, list[ShardCheck]]
    problems: list[str] = field(default_factory=list)

    @property
    def bad_shards(self) -> list[ShardCheck]:
        return [c for checks in self.shards.values() for c in checks if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.bad_shards


def check_shard(
    shard_dir: Path, entry: dict[str, Any], rows: np.ndarray | None, segment_length: int, vocab_size: int
) -> ShardCheck:
    """Check one shard against its manifest entry and its rows of index.npy (None: index unreadable)."""
    check = ShardCheck(entry["path"], segment_lengths=np.zeros(segment_length + 1, dtype=np.int64))
    path = shard_dir / entry["path"]
    if not path.is_file():
        check.problems.append("missing")
        return check
    data = path.read_bytes()
    if len(data) != entry["bytes"]:
        check.problems.append(f"{len(data)} bytes, manifest says {entry['bytes']} (truncated or replaced)")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        check.problems.append("sha256 differs from the manifest (altered)")
    members: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    spans: dict[str, list[int]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if ext not in MEMBER_EXTS or not info.isfile():
                    check.problems.append(f"unexpected member {info.name}")
                    continue
                if key not in members:
                    members[key], spans[key] = {}, [info.offset, 0]
                    order.append(key)
                members[key][ext] = tar.extractfile(info).read()
                spans[key][1] = info.offset_data + info.size + (-info.size % TAR_BLOCK)
    except (tarfile.TarError, EOFError, OSError) as exc:
        check.problems.append(f"unreadable tar ({exc})")
    for position, key in enumerate(order):
        sample = members[key]
        if set(sample) != set(MEMBER_EXTS):
            check.problems.append(f"sample {key} lacks {sorted(set(MEMBER_EXTS) - set(sample))}")
            continue
        try:
            ids, ends = parse_npy(sample["ids.npy"]), parse_npy(sample["seg.npy"])
            meta = json.loads(sample["json"])
        except ValueError as exc:
            check.problems.append(f"sample {key} undecodable ({exc})")
            continue
        lengths = np.diff(ends.astype(np.int64), prepend=0)
        if ends.size == 0 or ends[-1] != ids.size or lengths.min() < 1 or lengths.max() > segment_length:
            check.problems.append(f"sample {key}: segments do not cut its {ids.size} tokens into 1..{segment_length}")
        if ids.size and int(ids.max()) >= vocab_size:
            check.problems.append(f"sample {key}: token id {int(ids.max())} outside the vocabulary ({vocab_size})")
        if check.first_sample is None:
            check.first_sample = (key, ids, ends, meta)
        check.doc_tokens.append(int(ids.size))
        check.doc_segments.append(int(ends.size))
        check.segment_lengths += np.bincount(np.clip(lengths, 0, segment_length), minlength=segment_length + 1)
        if rows is not None and position < rows.size:
            row = rows[position]
            start, end = spans[key]
            if (
                (int(row["offset"]), int(row["length"])) != (start, end - start)
                or int(row["num_tokens"]) != ids.size
                or int(row["num_segments"]) != ends.size
                or int(row["crc32"]) != zlib.crc32(data[start:end])
            ):
                check.problems.append(f"sample {key} disagrees with index.npy")
    found = (len(check.doc_tokens), sum(check.doc_segments), sum(check.doc_tokens))
    expected = (entry["documents"], entry["segments"], entry["tokens"])
    if found != expected:
        check.problems.append(f"holds (documents, segments, tokens) = {found}, manifest says {expected}")
    if rows is not None and rows.size != len(order):
        check.problems.append(f"holds {len(order)} samples, index.npy lists {rows.size}")
    return check


def check_shard_dir(shard_dir: str | Path, progress: bool = False) -> DirCheck:
    """Check every shard of every split (see the module docstring)."""
    from tqdm.auto import tqdm

    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    result = DirCheck(str(shard_dir), manifest, {})
    vocab_size = manifest["tokenizer"]["vocab_size"]
    total = sum(len(e["shards"]) for e in manifest["splits"].values())
    with tqdm(total=total, desc="verifying", unit=" shards", disable=not progress) as bar:
        for split, entry in manifest["splits"].items():
            index = _read_index(shard_dir, entry, result.problems)
            checks = []
            for number, shard in enumerate(entry["shards"]):
                rows = None if index is None else index[index["shard"] == number]
                checks.append(check_shard(shard_dir, shard, rows, manifest["segment_length"], vocab_size))
                bar.update(1)
            result.shards[split] = checks
    return result


def _read_index(shard_dir: Path, entry: dict[str, Any], problems: list[str]) -> np.ndarray | None:
    info = entry["index"]
    try:
        data = (shard_dir / info["path"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise DataError("sha256 differs from the manifest")
        index = np.load(io.BytesIO(data), allow_pickle=False)
        if index.dtype != INDEX_DTYPE:
            raise DataError(f"dtype {index.dtype} is not the index dtype")
    except (OSError, ValueError, DataError) as exc:
        problems.append(f"{info['path']}: {exc}")
        return None
    return index


def distribution(values: np.ndarray) -> dict[str, float]:
    """min / p10 / p50 / p90 / max / mean of a sample (percentiles: the lower value at the rank)."""
    if values.size == 0:
        return {}
    p10, p50, p90 = np.percentile(values, [10, 50, 90], method="lower")
    return {"min": float(values.min()), "p10": float(p10), "p50": float(p50), "p90": float(p90),
            "max": float(values.max()), "mean": float(values.mean())}  # fmt: skip


def histogram_distribution(counts: np.ndarray) -> dict[str, float]:
    """`distribution` of the values whose histogram is `counts` (counts[v] = occurrences of v)."""
    total = int(counts.sum())
    if total == 0:
        return {}
    cumulative = np.cumsum(counts)
    present = np.flatnonzero(counts)

    def percentile(q: float) -> float:
        return float(np.searchsorted(cumulative, int(np.floor(q / 100 * (total - 1))) + 1))

    return {"min": float(present[0]), "p10": percentile(10), "p50": percentile(50), "p90": percentile(90),
            "max": float(present[-1]), "mean": float((np.arange(counts.size) * counts).sum() / total)}  # fmt: skip


def split_statistics(checks: list[ShardCheck]) -> dict[str, Any]:
    """Corpus statistics of one split from its shards' checks."""
    tokens = np.array([t for c in checks for t in c.doc_tokens], dtype=np.int64)
    segments = np.array([s for c in checks for s in c.doc_segments], dtype=np.int64)
    lengths = sum((c.segment_lengths for c in checks), np.zeros(1, dtype=np.int64)) if checks else np.zeros(1, np.int64)
    return {
        "shards": len(checks),
        "documents": int(tokens.size),
        "segments": int(segments.sum()),
        "tokens": int(tokens.sum()),
        "segment_length": histogram_distribution(lengths),
        "document_tokens": distribution(tokens),
        "document_segments": distribution(segments),
    }
