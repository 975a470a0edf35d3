"""Random access to the documents of one split of a SHARD_DIR, with integrity checks.

The split's `index.npy` (manifest.py) gives each document's byte span in its shard: a read is one seek and one
read, checked against the span's CRC-32. Used by the stream loader and by the merge of slices (a slice folder
is a small shard directory whose `slice.json` has the manifest's `splits` entry).
"""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import ManifestError, ShardError
from .manifest import INDEX_DTYPE, read_manifest, split_entry
from .samples import Sample, decode_sample


class SplitReader:
    """Random access to the documents of one split of a SHARD_DIR.

    On construction it checks the split's index against the manifest (sha256) and every shard's size
    against the manifest (catching truncated or replaced shards without reading them); `read()` checks
    each document's CRC-32. Problems raise ShardError naming the shard(s). Not thread-safe: use one
    reader per thread.
    """

    def __init__(
        self,
        shard_dir: str | os.PathLike,
        split: str,
        manifest: dict[str, Any] | None = None,
        *,
        max_open_files: int = 16,
    ) -> None:
        self.shard_dir = Path(shard_dir)
        self.split = split
        self.manifest = manifest if manifest is not None else read_manifest(shard_dir)
        entry = split_entry(self.manifest, split, shard_dir)
        self.shards: list[str] = [s["path"] for s in entry["shards"]]
        self.index = self._load_index(entry)
        bad = []
        for shard in entry["shards"]:
            path = self.shard_dir / shard["path"]
            if not path.is_file():
                bad.append((shard["path"], "missing"))
            elif path.stat().st_size != shard["bytes"]:
                bad.append(
                    (
                        shard["path"],
                        f"{path.stat().st_size} bytes, manifest says {shard['bytes']}: truncated or replaced",
                    )
                )
        if bad:
            raise ShardError(
                "bad shards in "
                + f"{self.shard_dir}: "
                + "; ".join(f"{p} ({why})" for p, why in bad)
                + ". Check them with data_prep/inspect_shards.py; restore them or re-run shard_documents.py",
                [p for p, _ in bad],
            )
        self._files: OrderedDict[int, IO[bytes]] = OrderedDict()
        self._max_open_files = max_open_files

    def _load_index(self, entry: dict[str, Any]) -> np.ndarray:
        info = entry["index"]
        path = self.shard_dir / info["path"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ManifestError(f"cannot read the index {path}: {exc}; re-run shard_documents.py") from exc
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise ManifestError(f"{path} does not match manifest.json (sha256): restore it or re-shard the corpus")
        try:
            index = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise ManifestError(f"{path} is not a readable index: {exc}") from exc
        if index.dtype != INDEX_DTYPE or index.size != entry["documents"]:
            raise ManifestError(f"{path} is not an index of {entry['documents']} documents")
        return index

    def __len__(self) -> int:
        return int(self.index.size)

    @property
    def segment_counts(self) -> np.ndarray:
        """Number of segments of each document, in index order."""
        return self.index["num_segments"]

    def _file(self, shard: int) -> IO[bytes]:
        f = self._files.pop(shard, None)
        if f is None:
            if len(self._files) >= self._max_open_files:
                self._files.popitem(last=False)[1].close()
            f = open(self.shard_dir / self.shards[shard], "rb")
        self._files[shard] = f
        return f

    def read_span(self, doc: int) -> bytes:
        """The tar bytes of document `doc` (index order), CRC-checked; ShardError naming the shard when damaged."""
        row = self.index[doc]
        shard = int(row["shard"])
        where = self.shards[shard]
        f = self._file(shard)
        f.seek(int(row["offset"]))
        span = f.read(int(row["length"]))
        if len(span) != int(row["length"]) or zlib.crc32(span) != int(row["crc32"]):
            raise ShardError(
                f"{where}: document {doc} of split {self.split!r} does not match its checksum: the shard "
                "is altered or truncated. Check it with data_prep/inspect_shards.py; restore it or re-shard",
                [where],
            )
        return span

    def read(self, doc: int) -> Sample:
        """Read and decode document `doc` (index order); ShardError naming the shard when it is damaged."""
        row = self.index[doc]
        where = self.shards[int(row["shard"])]
        sample = decode_sample(self.read_span(doc), where)
        if sample.ids.size != int(row["num_tokens"]) or sample.ends.size != int(row["num_segments"]):
            raise ShardError(f"{where}: sample {sample.key} disagrees with index.npy", [where])
        return sample

    def close(self) -> None:
        """Close the open shard files."""
        while self._files:
            self._files.popitem()[1].close()
