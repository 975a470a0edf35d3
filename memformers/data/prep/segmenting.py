"""Cutting a document's token ids into consecutive segments.

A document of n tokens becomes segments of at most L tokens (the `<s>`/`</s>` added at train time are
not counted). Each cut is placed after the last sentence-end token (see
`memformers.data.tokenizer.sentence_end_table`) inside the next window of L tokens; when the window has none, or the
rest of the document fits in it, the cut is hard, at L tokens or at the document's end. Every token
lands in exactly one segment, in order: nothing is dropped.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np


def segment_ends(ids: np.ndarray, is_sentence_end: np.ndarray, segment_length: int) -> np.ndarray:
    """Cumulative end offsets of the segments of `ids` (the last one is `len(ids)`), as uint32.

    Segment i is `ids[ends[i-1]:ends[i]]` with `ends[-1] = 0`; each is 1..segment_length tokens long.
    An empty `ids` has no segments.
    """
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}")
    n = int(ids.shape[0])
    if n <= segment_length:
        return np.array([n] if n else [], dtype=np.uint32)
    # Candidate cut offsets: just after each sentence-end token.
    cuts = (np.flatnonzero(is_sentence_end[ids]) + 1).tolist()
    ends: list[int] = []
    pos = 0
    while n - pos > segment_length:
        limit = pos + segment_length
        k = bisect.bisect_right(cuts, limit) - 1
        cut = cuts[k] if k >= 0 and cuts[k] > pos else limit
        ends.append(cut)
        pos = cut
    if n > pos:
        ends.append(n)
    return np.asarray(ends, dtype=np.uint32)


def segment_ends_batch(
    ids: np.ndarray, lengths: Sequence[int], is_sentence_end: np.ndarray, segment_length: int
) -> list[list[int]]:
    """`segment_ends` of many documents at once, as lists: `ids` holds their token ids end to end, `lengths[i]`
    tokens each. One vectorised pass finds the sentence ends of the whole batch, so a document costs a few
    bisections instead of a few numpy calls (what the sharding workers use; the same cuts, tested)."""
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}")
    cuts = (np.flatnonzero(is_sentence_end[ids]) + 1).tolist()  # offsets in the batch just after a sentence end
    out: list[list[int]] = []
    start = 0
    for n in lengths:
        if n <= segment_length:
            out.append([n] if n else [])
            start += n
            continue
        ends: list[int] = []
        pos, end = start, start + n
        while end - pos > segment_length:
            limit = pos + segment_length
            k = bisect.bisect_right(cuts, limit) - 1
            cut = cuts[k] if k >= 0 and cuts[k] > pos else limit
            ends.append(cut - start)
            pos = cut
        ends.append(n)
        out.append(ends)
        start = end
    return out
