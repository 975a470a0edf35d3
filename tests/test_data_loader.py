"""The lane schedule (pure) and SegmentStreamLoader: exactly-once, in order, ranks, epochs, resume."""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import SEGMENT_LENGTH

from memformers.data import (  # noqa: E402
    DataError,
    SegmentStreamLoader,
    SplitReader,
    assign_lanes,
    epoch_order,
    plan_epoch,
    read_manifest,
)

# -- the schedule, pure ---------------------------------------------------------------------------------


def _check_schedule(counts: np.ndarray, world_size: int, lanes: int, seed: int, epoch: int) -> None:
    seen: dict[int, list[int]] = defaultdict(list)
    lengths = set()
    for rank in range(world_size):
        plan = plan_epoch(counts, seed=seed, epoch=epoch, rank=rank, world_size=world_size, lanes=lanes)
        lengths.add(plan.num_batches)
        batches = list(plan.iter_slots())
        assert len(batches) == plan.num_batches
        for lane in range(lanes):
            stream = [b[lane] for b in batches]
            held = [s for s in stream if s is not None]
            # a lane emits a document's segments contiguously and in order, then the next document
            for (doc, k), nxt in zip(held, held[1:]):
                assert nxt == (doc, k + 1) or (nxt[1] == 0 and k == counts[doc] - 1)
            if held:
                assert held[0][1] == 0 and held[-1][1] == counts[held[-1][0]] - 1
                first_idle = next((i for i, s in enumerate(stream) if s is None), len(stream))
                assert all(s is None for s in stream[first_idle:])  # idle only at the end
            for doc, k in held:
                seen[doc].append(k)
    assert len(lengths) == 1  # every rank yields the same number of batches
    assert sorted(seen) == list(range(counts.size))
    for doc, ks in seen.items():
        assert ks == list(range(counts[doc]))  # every segment exactly once, in order


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_schedule_exactly_once_in_order(world_size: int, lanes: int) -> None:
    rng = np.random.default_rng(world_size * 10 + lanes)
    for num_docs in (1, 2, 7, 40):
        counts = rng.integers(1, 12, size=num_docs)
        _check_schedule(counts, world_size, lanes, seed=5, epoch=int(rng.integers(0, 3)))


def test_schedule_is_deterministic_and_shuffled_per_epoch() -> None:
    assert np.array_equal(epoch_order(100, 1, 0), epoch_order(100, 1, 0))
    assert not np.array_equal(epoch_order(100, 1, 0), epoch_order(100, 1, 1))
    assert not np.array_equal(epoch_order(100, 1, 0), epoch_order(100, 2, 0))
    assert sorted(epoch_order(100, 1, 0)) == list(range(100))
    # pinned: the order must not change across library versions (resume across upgrades)
    assert epoch_order(8, 0, 0).tolist() == [0, 1, 6, 3, 5, 4, 2, 7]
    assert epoch_order(8, 12345, 3).tolist() == [5, 3, 2, 6, 1, 4, 7, 0]


def test_lane_assignment_is_greedy_by_free_time() -> None:
    lane, start, length = assign_lanes([3, 1, 1, 2, 5], lanes=2)
    assert lane.tolist() == [0, 1, 1, 1, 0] and start.tolist() == [0, 0, 1, 2, 3] and length == 8


# -- the loader on real shards ------------------------------------------------------------------------


def _run(shards: Path, **kwargs) -> list[dict]:
    return list(SegmentStreamLoader(shards, kwargs.pop("split", "train"), segment_length=SEGMENT_LENGTH, **kwargs))


def _documents(shards: Path, split: str = "train") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    reader = SplitReader(shards, split)
    docs = {}
    for i in range(len(reader)):
        sample = reader.read(i)
        docs[sample.key] = (np.array(sample.ids), np.array(sample.ends))
    return docs


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_segment_exactly_once_in_order_on_one_rank_and_lane(shard_dir: Path, world_size: int) -> None:
    docs = _documents(shard_dir)
    ids = read_manifest(shard_dir)["tokenizer"]["special_ids"]
    runs = [_run(shard_dir, rank=r, world_size=world_size, lanes=3, seed=11) for r in range(world_size)]
    assert len({len(batches) for batches in runs}) == 1
    seen: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for rank, batches in enumerate(runs):
        for b, batch in enumerate(batches):
            lengths = batch["attention_mask"].sum(1)
            assert batch["input_ids"].shape[1] == int(lengths.max())  # padded to the longest segment
            for lane in range(3):
                row = batch["input_ids"][lane]
                assert row[0] == ids["bos"] and row[lengths[lane] - 1] == ids["eos"]
                assert (row[lengths[lane] :] == ids["pad"]).all()
                if not batch["valid"][lane]:
                    assert lengths[lane] == 2 and batch["resets"][lane] and batch["doc_ids"][lane] == ""
                    assert batch["segment_index"][lane] == -1
                    continue
                key, k = batch["doc_ids"][lane], int(batch["segment_index"][lane])
                assert bool(batch["resets"][lane]) == (k == 0)
                tokens, ends = docs[key]
                begin = ends[k - 1] if k else 0
                assert row[1 : lengths[lane] - 1].tolist() == tokens[begin : ends[k]].tolist()
                seen[key].append((k, rank, lane, b))
    assert set(seen) == set(docs)
    for key, hits in seen.items():
        assert [k for k, *_ in hits] == list(range(docs[key][1].size))
        assert len({(rank, lane) for _, rank, lane, _ in hits}) == 1  # one rank, one lane
        assert [b for *_, b in hits] == list(range(hits[0][3], hits[0][3] + len(hits)))  # consecutive batches


def test_batch_contract(shard_dir: Path) -> None:
    batch = next(iter(SegmentStreamLoader(shard_dir, "val", lanes=4, segment_length=SEGMENT_LENGTH, seed=0)))
    assert set(batch) == {"input_ids", "attention_mask", "resets", "valid", "doc_ids", "segment_index", "epoch"}
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape[0] == 4
    assert batch["input_ids"].shape[1] <= SEGMENT_LENGTH + 2
    assert batch["attention_mask"].dtype == torch.bool and batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["resets"].dtype == torch.bool and batch["valid"].dtype == torch.bool and batch["resets"].all()
    assert batch["segment_index"].dtype == torch.long and isinstance(batch["doc_ids"], list) and batch["epoch"] == 0


def test_padding_lanes_when_a_rank_has_fewer_documents_than_lanes(shard_dir: Path) -> None:
    num_val = read_manifest(shard_dir)["splits"]["val"]["documents"]
    batches = _run(shard_dir, split="val", lanes=num_val + 2, seed=0)
    assert all(not b["valid"][-2:].any() for b in batches)
    assert sum(int((b["valid"] & b["resets"]).sum()) for b in batches) == num_val


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["doc_ids"] == y["doc_ids"] and x["epoch"] == y["epoch"]
        and all(torch.equal(x[k], y[k]) for k in ("input_ids", "attention_mask", "resets", "valid", "segment_index"))
        for x, y in zip(a, b)
    )  # fmt: skip


def test_epochs_seed_and_infinite_cycling(shard_dir: Path) -> None:
    loader = SegmentStreamLoader(shard_dir, "train", lanes=2, segment_length=SEGMENT_LENGTH, seed=3, epochs=2)
    batches = list(loader)
    n0, n1 = loader.batches_in_epoch(0), loader.batches_in_epoch(1)
    assert len(batches) == n0 + n1 and [b["epoch"] for b in batches] == [0] * n0 + [1] * n1
    first = [b["doc_ids"] for b in batches[:n0]]
    assert first != [b["doc_ids"] for b in batches[n0 : n0 + n0]]  # reshuffled
    assert _same(batches[:n0], _run(shard_dir, lanes=2, seed=3))  # epoch 0 of any loader with this seed
    assert not _same(batches[:n0], _run(shard_dir, lanes=2, seed=4))
    assert _same(list(loader), batches)  # a finished loader starts over
    forever = SegmentStreamLoader(shard_dir, "train", lanes=2, segment_length=SEGMENT_LENGTH, seed=3, epochs=None)
    head = list(itertools.islice(forever, n0 + n1 + 5))
    assert _same(head[: n0 + n1], batches) and head[-1]["epoch"] == 2


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_from_any_batch_yields_the_same_batches(shard_dir: Path, prefetch: int) -> None:
    settings = dict(rank=1, world_size=2, lanes=3, segment_length=SEGMENT_LENGTH, seed=9, epochs=2, prefetch=prefetch)
    full = list(SegmentStreamLoader(shard_dir, "train", **settings))
    n0 = SegmentStreamLoader(shard_dir, "train", **settings).batches_in_epoch(0)
    for cut in (0, 1, 7, n0 - 1, n0, n0 + 3, len(full) - 1, len(full)):
        loader = SegmentStreamLoader(shard_dir, "train", **settings)
        head = list(itertools.islice(loader, cut))
        state = loader.state_dict()
        resumed = SegmentStreamLoader(shard_dir, "train", **settings)
        resumed.load_state_dict(state)
        assert _same(head + list(resumed), full), cut
    # the same loader object continues where an interrupted loop stopped
    loader = SegmentStreamLoader(shard_dir, "train", **settings)
    for i, _ in enumerate(loader):
        if i == 4:
            break
    assert _same(list(loader), full[5:])


def test_state_from_other_settings_is_refused(shard_dir: Path) -> None:
    loader = SegmentStreamLoader(shard_dir, "train", lanes=2, segment_length=SEGMENT_LENGTH, seed=1)
    other = SegmentStreamLoader(shard_dir, "train", lanes=3, segment_length=SEGMENT_LENGTH, seed=2)
    with pytest.raises(ValueError, match=r"seed \(2, now 1\), lanes \(3, now 2\)"):
        loader.load_state_dict(other.state_dict())


def test_transform_runs_in_the_prefetch_thread(shard_dir: Path) -> None:
    threads = set()

    def transform(batch: dict) -> dict:
        threads.add(threading.current_thread().name)
        return batch | {"doubled": batch["input_ids"] * 2}

    loader = SegmentStreamLoader(shard_dir, "val", lanes=2, segment_length=SEGMENT_LENGTH, transform=transform)
    batches = list(loader)
    assert threads == {"segment-prefetch"}
    assert all(torch.equal(b["doubled"], b["input_ids"] * 2) for b in batches)

    def failing(batch: dict) -> dict:
        raise RuntimeError("noiser broke")

    with pytest.raises(RuntimeError, match="noiser broke"):
        list(SegmentStreamLoader(shard_dir, "val", lanes=2, segment_length=SEGMENT_LENGTH, transform=failing))


def test_segment_length_mismatch_and_bad_arguments(shard_dir: Path) -> None:
    with pytest.raises(
        DataError,
        match=rf"segment_length=128 but the shards .* {SEGMENT_LENGTH} tokens: pass segment_length={SEGMENT_LENGTH}",
    ):
        SegmentStreamLoader(shard_dir, "train", lanes=2, segment_length=128)
    with pytest.raises(DataError, match=r"no split 'test'; it has \['train', 'val'\]"):
        SegmentStreamLoader(shard_dir, "test", lanes=2, segment_length=SEGMENT_LENGTH)
    with pytest.raises(ValueError, match="rank"):
        SegmentStreamLoader(shard_dir, "train", rank=2, world_size=2, lanes=2, segment_length=SEGMENT_LENGTH)
    with pytest.raises(DataError, match="no manifest.json"):
        SegmentStreamLoader(shard_dir / "train", "train", lanes=2, segment_length=SEGMENT_LENGTH)
