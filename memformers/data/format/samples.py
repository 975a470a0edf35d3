"""The sample format: one document's tar members, encoded and decoded without `tarfile` (and byte-identical to it).

Shards are plain (uncompressed, USTAR) webdataset tars, one sample per document, its members in this
order (`KEY` = `{split}-{shard:06d}-{position:06d}`, unique in the SHARD_DIR)::

    KEY.ids.npy   1-D uint16 (uint32 for vocabularies over 65,536) token ids, no <s>/</s>
    KEY.seg.npy   1-D uint32 cumulative segment end offsets: segment i = ids[seg[i-1]:seg[i]],
                  seg[-1] = len(ids)
    KEY.json      {"id": the input record's id or null, "source": "file:line" / "file#row" / ...}

Every member has mtime 0, mode 0644, uid/gid 0 and no owner names, so the same documents give
byte-identical shards. `webdataset.WebDataset(url)` (or `tarfile`) reads them as they are; the loader
reads a document directly from its byte span in `index.npy` (manifest.py, reader.py) and checks its CRC-32.
`tar_members` is the one reader of member headers (decoding, re-keying and key lookup all go through it).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ShardError

TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tarfile.RECORDSIZE: archives are padded to a multiple of it
MEMBER_EXTS = ("ids.npy", "seg.npy", "json")
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_HEADER = re.compile(
    r"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (True|False), 'shape': \((\d+),\), \} *\n"
)


def npy_header(dtype: np.dtype, count: int) -> bytes:
    """The `.npy` (format 1.0) header of a 1-D array, as `np.save` writes it."""
    return _npy_header(np.dtype(dtype).str, count)


@functools.lru_cache(maxsize=4096)  # one per document and member when sharding; lengths repeat
def _npy_header(descr: str, count: int) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({count},), }}"
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
        (
            encoded,
            _ZEROS[100 - len(encoded)],
            _HEADER_HEAD,
            size_field,
            _HEADER_TAIL[:12],
            b"%06o\0 " % checksum,
            _HEADER_TAIL[20:],
        )
    )


def sample_key(split: str, shard: int, position: int) -> str:
    """The key of the sample at `position` of `split`'s shard `shard` (unique in a SHARD_DIR)."""
    return f"{split}-{shard:06d}-{position:06d}"


def parse_sample_key(key: str) -> tuple[str, int, int]:
    """(split, shard, position) of a key made by `sample_key`; ValueError when it is not one."""
    split, shard, position = key.rsplit("-", 2)
    return split, int(shard), int(position)


def tar_members(span: bytes | memoryview) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, data size) of each member of a sample's tar bytes, in order.

    Only the name and size fields of each 512-byte header are read (a sample's bytes are CRC-checked or freshly
    written, so the rest of the header is known). UnicodeDecodeError / ValueError on a malformed header.
    """
    view = memoryview(span)
    pos = 0
    while pos < len(view):
        name = bytes(view[pos : pos + 100]).split(b"\0", 1)[0].decode("utf-8")
        size = int(bytes(view[pos + 124 : pos + 136]).strip(b"\0 ") or b"0", 8)
        start = pos + TAR_BLOCK
        yield name, start, size
        pos = start + size + (-size % TAR_BLOCK)


def key_of(span: bytes | memoryview) -> str:
    """The key of a sample (its first member's name up to the first dot)."""
    name, _, _ = next(tar_members(span))
    return name.partition(".")[0]


def rekey(span: bytes | memoryview, key: str) -> bytes:
    """A sample's tar bytes with every member renamed to `key`.EXT (new headers, the same data and padding)."""
    view, parts = memoryview(span), []
    for name, start, size in tar_members(view):
        parts += (tar_header(f"{key}.{name.partition('.')[2]}", size), view[start : start + size + (-size % TAR_BLOCK)])
    return b"".join(parts)


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


def sample_meta(doc_id: str | None, source: str) -> bytes:
    """The `.json` member of a sample: `{"id": ..., "source": ...}` as `encode_sample` writes it (keys sorted,
    non-ASCII kept), without building a dict."""
    encoded_id = "null" if doc_id is None else _JSON_STRING(doc_id)
    return f'{{"id": {encoded_id}, "source": {_JSON_STRING(source)}}}'.encode()


_JSON_STRING = json.JSONEncoder(ensure_ascii=False).encode


_MEMBER_SUFFIXES = tuple((suffix, sum(suffix)) for suffix in (b".ids.npy", b".seg.npy", b".json"))
_MTIME, _AFTER_CHECKSUM = _HEADER_TAIL[:12], _HEADER_TAIL[20:]


def encode_sample_bytes(key: bytes, ids: bytes, ids_descr: str, ends: bytes, meta: bytes) -> bytes:
    """`encode_sample` of token ids and segment ends given as their little-endian bytes (`ids_descr`: the ids'
    dtype string, "<u2" or "<u4"; ends are "<u4") and the `.json` member's bytes: the same sample bytes, at a
    fraction of the cost (what the sharding workers use). The three headers differ only in the member's suffix and
    size, so the key's share of their checksums is summed once."""
    if len(key) + 8 > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {key.decode('utf-8', 'replace')}.ids.npy")
    checksum = _BASE_CHECKSUM + sum(key)
    members = (
        (_npy_header(ids_descr, len(ids) // int(ids_descr[-1])), ids),
        (_npy_header("<u4", len(ends) // 4), ends),
        (b"", meta),
    )
    parts: list[bytes] = []
    for (suffix, suffix_sum), (head, data) in zip(_MEMBER_SUFFIXES, members):
        size = len(head) + len(data)
        size_field = b"%011o\0" % size
        header_checksum = b"%06o\0 " % (checksum + suffix_sum + sum(size_field))
        parts += (key, suffix, _ZEROS[100 - len(key) - len(suffix)], _HEADER_HEAD, size_field, _MTIME)
        parts += (header_checksum, _AFTER_CHECKSUM, head, data, _ZEROS[-size % TAR_BLOCK])
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
    key = None
    try:
        for name, start, size in tar_members(view):  # the span's CRC is checked: only names and sizes are read
            if start + size > len(view):
                raise ValueError(f"member {name} runs past the sample's span")
            member_key, _, ext = name.partition(".")
            if key is None:
                key = member_key
            if member_key != key or ext not in MEMBER_EXTS:
                raise ValueError(f"unexpected member {name} in sample {key}")
            members[ext] = view[start : start + size]
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
