"""Shard I/O: the sample format, writing samples, and random-access reading with integrity checks.

Shards are plain (uncompressed, USTAR) webdataset tars, one sample per document, its members in this
order (`KEY` = `{split}-{shard:06d}-{position:06d}`, unique in the SHARD_DIR)::

    KEY.ids.npy   1-D uint16 (uint32 for vocabularies over 65,536) token ids, no <s>/</s>
    KEY.seg.npy   1-D uint32 cumulative segment end offsets: segment i = ids[seg[i-1]:seg[i]],
                  seg[-1] = len(ids)
    KEY.json      {"id": the input record's id or null, "source": "file:line" / "file#row" / ...}

Every member has mtime 0, mode 0644, uid/gid 0 and no owner names, so the same documents give
byte-identical shards. `webdataset.WebDataset(url)` (or `tarfile`) reads them as they are; the loader
reads a document directly from its byte span in `index.npy` (manifest.py) and checks its CRC-32.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import io
import json
import os
import re
import struct
import tarfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import ManifestError, ShardError
from .manifest import INDEX_DTYPE, read_manifest, split_entry

TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tarfile.RECORDSIZE: archives are padded to a multiple of it
MEMBER_EXTS = ("ids.npy", "seg.npy", "json")
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_HEADER = re.compile(r"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (True|False), 'shape': \((\d+),\), \} *\n")


def npy_header(dtype: np.dtype, count: int) -> bytes:
    """The `.npy` (format 1.0) header of a 1-D array, as `np.save` writes it."""
    return _npy_header(np.dtype(dtype).str, count)


@functools.lru_cache(maxsize=4096)  # one per document and member when sharding; lengths repeat
def _npy_header(descr: str, count: int) -> bytes:
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%d,), }" % (descr, count)
    header += " " * ((-(len(_NPY_MAGIC) + 2 + len(header) + 1)) % 64) + "\n"
    return _NPY_MAGIC + struct.pack("<H", len(header)) + header.encode("latin1")


def npy_bytes(array: np.ndarray) -> bytes:
    """The `.npy` (format 1.0) encoding of a 1-D little-endian array, as `np.save` writes it."""
    return npy_header(array.dtype, array.shape[0]) + array.tobytes()


def parse_npy(data: bytes | memoryview) -> np.ndarray:
    """Decode a 1-D `.npy` (format 1.0) without copying; ValueError when it is not one."""
    data = memoryview(data)
    if bytes(data[:8]) != _NPY_MAGIC:
        raise ValueError("not an .npy (format 1.0) array")
    (header_len,) = struct.unpack("<H", data[8:10])
    text = bytes(data[10 : 10 + header_len]).decode("latin1")
    match = _NPY_HEADER.fullmatch(text)
    try:
        if match:  # the usual header of a 1-D array, as npy_bytes and np.save write it
            dtype, fortran, count = np.dtype(match[1]), match[2] == "True", int(match[3])
        else:
            header = ast.literal_eval(text)
            dtype, fortran, (count,) = np.dtype(header["descr"]), header["fortran_order"], header["shape"]
    except (SyntaxError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"malformed .npy header ({exc.__class__.__name__})") from exc
    if fortran or len(data) - 10 - header_len != count * dtype.itemsize:
        raise ValueError("malformed .npy header or size")
    return np.frombuffer(data, dtype=dtype, count=count, offset=10 + header_len)


# A USTAR header as tarfile (Python 3.11) writes it for a regular file with mode 0644, uid/gid 0,
# mtime 0 and no owner names: only the name, size and checksum vary (tarfile's code is ~10x slower).
_HEADER_HEAD = b"0000644\0" + b"0000000\0" * 2  # mode, uid, gid (after the 100-byte name)
_HEADER_TAIL = (
    b"00000000000\0"  # mtime
    + b" " * 8  # checksum, counted as spaces
    + b"0"  # type: regular file
    + b"\0" * 100  # link name
    + tarfile.POSIX_MAGIC  # "ustar\0" "00"
    + b"\0" * 64  # owner and group names
    + b"\0" * 16  # device major and minor: empty for regular files
    + b"\0" * 167  # prefix and padding to 512
)
_BASE_CHECKSUM = sum(_HEADER_HEAD) + sum(_HEADER_TAIL)


_ZEROS = tuple(b"\0" * n for n in range(TAR_BLOCK))  # padding of every length, made once


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header of a regular-file member (names up to 100 bytes)."""
    return _tar_header(name.encode("utf-8"), size)


def _tar_header(encoded: bytes, size: int) -> bytes:
    if len(encoded) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {encoded.decode('utf-8', 'replace')}")
    size_field = b"%011o\0" % size
    checksum = _BASE_CHECKSUM + sum(encoded) + sum(size_field)
    return b"".join(
        (encoded, _ZEROS[100 - len(encoded)], _HEADER_HEAD, size_field, _HEADER_TAIL[:12], b"%06o\0 " % checksum, _HEADER_TAIL[20:])
    )


def sample_key(split: str, shard: int, position: int) -> str:
    """The key of the sample at `position` of `split`'s shard `shard` (unique in a SHARD_DIR)."""
    return f"{split}-{shard:06d}-{position:06d}"


def encode_sample(key: str, ids: np.ndarray, ends: np.ndarray, meta: dict[str, Any]) -> bytes:
    """The tar bytes (headers and data) of one document's sample; independent of where it is written."""
    ends = ends.astype("<u4", copy=False)
    encoded_key = key.encode("utf-8")
    members = (
        (b".ids.npy", _npy_header(ids.dtype.str, ids.size), memoryview(ids).cast("B")),
        (b".seg.npy", _npy_header(ends.dtype.str, ends.size), memoryview(ends).cast("B")),
        (b".json", b"", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")),
    )
    parts: list[bytes | memoryview] = []
    for suffix, head, data in members:
        size = len(head) + len(data)
        parts += (_tar_header(encoded_key + suffix, size), head, data, _ZEROS[-size % TAR_BLOCK])
    return b"".join(parts)


def tar_trailer(size: int) -> bytes:
    """End-of-archive blocks, padded as tarfile pads, for an archive of `size` bytes so far."""
    end = size + 2 * TAR_BLOCK
    return b"\0" * (2 * TAR_BLOCK + (-end % TAR_RECORD))


@dataclass
class Sample:
    """A document as stored: key, token ids, cumulative segment ends, and its metadata bytes."""

    key: str
    ids: np.ndarray
    ends: np.ndarray
    meta: bytes


def decode_sample(span: bytes, where: str) -> Sample:
    """Parse one sample's tar span (as in index.npy); ShardError naming `where` when it is malformed."""
    members: dict[str, memoryview] = {}
    view = memoryview(span)
    pos, key = 0, None
    try:
        while pos < len(view):  # the span's CRC is checked: only the name and size fields are read
            name = bytes(view[pos : pos + 100]).split(b"\0", 1)[0].decode("utf-8")
            size = int(bytes(view[pos + 124 : pos + 136]).strip(b"\0 ") or b"0", 8)
            start = pos + TAR_BLOCK
            if start + size > len(view):
                raise ValueError(f"member {name} runs past the sample's span")
            member_key, _, ext = name.partition(".")
            if key is None:
                key = member_key
            if member_key != key or ext not in MEMBER_EXTS:
                raise ValueError(f"unexpected member {name} in sample {key}")
            members[ext] = view[start : start + size]
            pos = start + size + (-size % TAR_BLOCK)
        if set(members) != set(MEMBER_EXTS):
            raise ValueError(f"sample {key} lacks members {sorted(set(MEMBER_EXTS) - set(members))}")
        ids, ends = parse_npy(members["ids.npy"]), parse_npy(members["seg.npy"])
        if ends.size == 0 or int(ends[-1]) != ids.size or np.any(np.diff(ends.astype(np.int64), prepend=0) <= 0):
            raise ValueError(f"sample {key}: segment ends do not partition its {ids.size} tokens")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardError(f"{where}: undecodable sample ({exc}); the shard is damaged", [where]) from exc
    return Sample(str(key), ids, ends, bytes(members["json"]))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
                bad.append((shard["path"], f"{path.stat().st_size} bytes, manifest says {shard['bytes']}: truncated or replaced"))
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

    def read(self, doc: int) -> Sample:
        """Read document `doc` (index order); ShardError naming the shard when it is damaged."""
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
        sample = decode_sample(span, where)
        if sample.ids.size != int(row["num_tokens"]) or sample.ends.size != int(row["num_segments"]):
            raise ShardError(f"{where}: sample {sample.key} disagrees with index.npy", [where])
        return sample

    def close(self) -> None:
        """Close the open shard files."""
        while self._files:
            self._files.popitem()[1].close()
