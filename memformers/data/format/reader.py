"""Random access to the documents of one split of a SHARD_DIR, with integrity checks.

The split's `index.npy` (manifest.py) gives each document's byte span in its shard: a read is one seek and one
read, checked against the span's CRC-32. Used by the stream loader and by the merge of slices (a slice folder
is a small shard directory whose `slice.json` has the manifest's `splits` entry).
"""

from __future__ import annotations

import os
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import ManifestError, ShardError
from .manifest import INDEX_DTYPE, read_manifest, split_entry
from .samples import Sample, decode_sample, parse_sample_key


class SplitReader:
    """Random access to the documents of one split of a SHARD_DIR.

    On construction it maps the split's index (checked by size against the manifest) and checks every
    shard's size against the manifest (catching truncated or replaced shards without reading them);
    `read()` checks each document's CRC-32. Problems raise ShardError naming the shard(s). Not thread-safe: use one
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
        """The split's index, memory-mapped (read-only, shared through the page cache by the ranks of a node).

        Checked by its size against the manifest and by its dtype and length, not by hashing it: at a billion
        documents the index is 28 GB, hashed on every start by every rank. A damaged row shows up as the CRC
        mismatch of the document it points to; `data_prep/inspect_shards.py` checks the index's sha256.
        """
        info = entry["index"]
        path = self.shard_dir / info["path"]
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ManifestError(f"cannot read the index {path}: {exc}; re-run shard_documents.py") from exc
        if size != info["bytes"]:
            raise ManifestError(
                f"{path} has {size} bytes, manifest.json says {info['bytes']}: restore it or re-shard the corpus"
            )
        if entry["documents"] == 0:  # numpy cannot map an empty array
            return np.zeros(0, dtype=INDEX_DTYPE)
        try:
            index = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{path} is not a readable index: {exc}") from exc
        if index.dtype != INDEX_DTYPE or index.shape != (entry["documents"],):
            raise ManifestError(f"{path} is not an index of {entry['documents']} documents")
        return index

    def __len__(self) -> int:
        return int(self.index.size)

    @property
    def segment_counts(self) -> np.ndarray:
        """Number of segments of each document, in index order."""
        return self.index["num_segments"]

    @property
    def training_tokens(self) -> TrainingTokens:
        """Per document, the tokens it is trained on (its tokens plus <s> and </s> per segment), computed per
        lookup (nothing of the split's size is built)."""
        return TrainingTokens(self.index)

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

    def key_at(self, doc: int) -> str | None:
        """The key of document `doc` as its tar header names it, without checking the document (for reporting a
        damaged one); None where the header is unreadable."""
        try:
            f = self._file(int(self.index[doc]["shard"]))
            f.seek(int(self.index[doc]["offset"]))
            name = f.read(100).split(b"\0", 1)[0].decode("ascii")
            key = name.split(".", 1)[0]
            parse_sample_key(key)
            return key
        except (OSError, UnicodeDecodeError, ValueError):
            return None

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


class TrainingTokens:
    """`tokens[doc]`: a document's training tokens (tokens + 2 per segment) from the split's index, by lookup."""

    def __init__(self, index: np.ndarray) -> None:
        self._index = index

    def __len__(self) -> int:
        return int(self._index.size)

    def __getitem__(self, doc: int) -> int:
        row = self._index[doc]
        return int(row["num_tokens"]) + 2 * int(row["num_segments"])
