"""Cutting documents into segments (memformers.data.prep.segmenting)."""

from __future__ import annotations

import numpy as np
import pytest

from memformers.data import segment_ends  # noqa: E402
from memformers.data.prep.segmenting import segment_ends_batch  # noqa: E402

END = 9  # the sentence-end token of these tests
TABLE = np.zeros(16, dtype=bool)
TABLE[END] = True


def _segments(ids: list[int], length: int) -> list[list[int]]:
    ends = segment_ends(np.array(ids, dtype=np.uint16), TABLE, length)
    assert ends.dtype == np.uint32
    begins = [0, *ends[:-1].tolist()]
    return [ids[b:e] for b, e in zip(begins, ends.tolist())]


def test_cut_after_the_last_sentence_end_in_the_window() -> None:
    ids = [1, END, 1, 1, END, 1, 1, 1, 1, 1]
    assert _segments(ids, 6) == [[1, END, 1, 1, END], [1, 1, 1, 1, 1]]


def test_hard_cut_when_the_window_has_no_sentence_end() -> None:
    assert _segments([1] * 10, 4) == [[1] * 4, [1] * 4, [1] * 2]


def test_a_sentence_end_at_the_window_edge_cuts_there() -> None:
    assert _segments([1, 1, 1, END, 1, END], 4) == [[1, 1, 1, END], [1, END]]


def test_short_and_empty_documents() -> None:
    assert _segments([1, 2, 3], 64) == [[1, 2, 3]]
    assert _segments([], 64) == []
    with pytest.raises(ValueError):
        segment_ends(np.array([1]), TABLE, 0)


@pytest.mark.parametrize("seed", range(20))
def test_random_documents_partition_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    length = int(rng.integers(1, 20))
    ids = rng.choice([1, 2, END], size=int(rng.integers(0, 300)), p=[0.45, 0.45, 0.1]).tolist()
    segments = _segments(ids, length)
    assert sum(segments, []) == ids  # nothing dropped, nothing reordered
    for i, segment in enumerate(segments):
        assert 1 <= len(segment) <= length
        last = i == len(segments) - 1
        if not last and segment[-1] != END:
            assert len(segment) == length and END not in segment  # hard cut only without a sentence end
        if not last and segment[-1] == END:
            # no later sentence end fits in the window
            following = ids[sum(map(len, segments[: i + 1])) :]
            window_rest = following[: length - len(segment)]
            assert END not in window_rest


def test_a_batch_is_cut_as_each_document_alone() -> None:
    """segment_ends_batch (what the workers use) gives segment_ends' cuts for every document of a batch."""
    rng = np.random.default_rng(0)
    for length in (1, 3, 8, 64):
        docs = [rng.choice([1, 2, END], size=int(rng.integers(0, 200)), p=[0.45, 0.45, 0.1]) for _ in range(50)]
        batch = np.concatenate(docs).astype(np.uint16)
        cut = segment_ends_batch(batch, [len(d) for d in docs], TABLE, length)
        assert cut == [segment_ends(d.astype(np.uint16), TABLE, length).tolist() for d in docs]
