"""Cutting a document's token ids into consecutive segments.

A document of n tokens becomes segments of at most L tokens (the `<s>`/`</s>` added at train time are
not counted). Each cut is placed after the last sentence-end token (see
`memformers.data.tokenizer.sentence_end_table`) inside the next window of L tokens; when the window has none, or the
rest of the document fits in it, the cut is hard, at L tokens or at the document's end. Every token
lands in exactly one segment, in order: nothing is dropped.
"""

from __future__ import annotations

import bisect

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
