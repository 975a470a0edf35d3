"""A batch of document texts → token ids → segments → sample bytes: a sharding worker's per-document work.

The tokenizer is the fast tokenizer's backend, single-threaded (a worker is one core), with special tokens in the
text read as plain text ("<s>" or "<mask>" in a document is text). Ids travel as the little-endian bytes of the
token dtype: `struct` packs a Python list about twice as fast as numpy converts it; segment ends come from
`segment_ends_batch` over the whole batch; samples from `encode_sample_bytes` (format/samples.py), the same bytes
as `encode_sample`.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..format.samples import encode_sample_bytes, sample_key, sample_meta
from .segmenting import segment_ends_batch

_PACK_LIMIT = 1 << 16  # longer documents are converted by numpy (struct would build a huge argument tuple)


class Encoded:
    """One document's token ids and segment ends as little-endian bytes, and their counts."""

    __slots__ = ("ids", "ends", "tokens", "segments")

    def __init__(self, ids: bytes, ends: bytes, tokens: int, segments: int) -> None:
        self.ids, self.ends, self.tokens, self.segments = ids, ends, tokens, segments


@dataclass(frozen=True)
class EncoderSetup:
    """What a worker needs to encode: the tokenizer (its JSON), its sentence-end table, the segment length and the
    token dtype (a numpy dtype string)."""

    tokenizer_json: str
    is_sentence_end: np.ndarray
    segment_length: int
    token_dtype: str


class Encoder:
    """Texts → `Encoded` (None for a text without any token) → samples."""

    def __init__(self, setup: EncoderSetup) -> None:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(setup.tokenizer_json)
        self.tokenizer.encode_special_tokens = True
        self.is_sentence_end, self.segment_length = setup.is_sentence_end, setup.segment_length
        self.dtype = np.dtype(setup.token_dtype)
        self.descr = self.dtype.str

    def encode(self, texts: Sequence[str]) -> list[Encoded | None]:
        """Tokenize and segment a batch of texts."""
        char, dtype = self.dtype.char, self.dtype
        packed = []
        for encoding in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False):
            ids = encoding.ids
            if len(ids) <= _PACK_LIMIT:
                packed.append(struct.pack(f"<{len(ids)}{char}", *ids))
            else:
                packed.append(np.array(ids, dtype=dtype).tobytes())
        lengths = [len(p) // dtype.itemsize for p in packed]
        all_ids = np.frombuffer(b"".join(packed), dtype=dtype)
        ends = segment_ends_batch(all_ids, lengths, self.is_sentence_end, self.segment_length)
        return [
            Encoded(ids, struct.pack(f"<{len(e)}I", *e), n, len(e)) if n else None
            for ids, e, n in zip(packed, ends, lengths)
        ]

    def sample(self, split: str, shard: int, position: int, encoded: Encoded, doc_id: str | None, source: str):
        """The sample bytes of a document at (split, shard, position), and their CRC-32."""
        key = sample_key(split, shard, position).encode("utf-8")
        sample = encode_sample_bytes(key, encoded.ids, self.descr, encoded.ends, sample_meta(doc_id, source))
        return sample, zlib.crc32(sample)
