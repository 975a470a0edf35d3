"""The global-lane schedule (pure) and SegmentStreamLoader: exactly-once, in order, ranks, epochs, resume on any
shape (elastic), the version-1 carry-over."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import SEGMENT_LENGTH

from memformers.data import (
    DataError,
    EpochOrder,
    MixtureSchedule,
    Schedule,
    SegmentStreamLoader,
    SplitReader,
    StreamState,
    read_manifest,
)
from memformers.data.stream.legacy import assign_lanes_v1, epoch_order_v1, state_from_v1

# -- the schedule, pure ---------------------------------------------------------------------------------

SHAPES = [(w, lanes) for w in (1, 2, 3) for lanes in range(1, 6)]


def _stream(counts: np.ndarray, shapes: list[tuple[int, int]], cuts: list[int], seed: int = 5) -> list[list]:
    """Run one epoch of the global schedule, re-spread to shapes[i + 1] (world size, lanes) before batch cuts[i]
    as a resumed run is; per batch, per global lane of that batch's shape, the Slot or None."""
    schedule = Schedule(counts, seed)
    state = StreamState.fresh(shapes[0][0] * shapes[0][1])
    batches: list[list] = []
    pending = list(zip(cuts, shapes[1:]))
    while True:
        if pending and len(batches) == pending[0][0]:
            world_size, lanes = pending.pop(0)[1]
            state = StreamState.from_dict(state.as_dict()).resize(world_size * lanes)  # through its saved form
        slots = schedule.next_batch(state)
        if slots is None:
            return batches
        batches.append(slots)


def _check_exactly_once(counts: np.ndarray, batches: list[list]) -> None:
    """Every segment once, in order, at consecutive batches on one lane unless it moved (then `restored`);
    a document's first segment is never restored, a later one is restored only where its lane changed."""
    seen: dict[int, list[int]] = defaultdict(list)
    where: dict[int, tuple[int, int]] = {}  # doc -> (lane, batch) of its last segment
    for b, slots in enumerate(batches):
        for lane, slot in enumerate(slots):
            if slot is None:
                continue
            seen[slot.doc].append(slot.segment)
            if slot.segment == 0:
                assert not slot.restored
            else:
                last_lane, last_batch = where[slot.doc]
                assert slot.restored == (last_lane != lane or last_batch != b - 1), (slot, where[slot.doc], lane, b)
            where[slot.doc] = (lane, b)
    assert sorted(seen) == list(range(counts.size))
    for doc, ks in seen.items():
        assert ks == list(range(counts[doc])), doc


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_schedule_exactly_once_in_order(world_size: int, lanes: int) -> None:
    rng = np.random.default_rng(world_size * 10 + lanes)
    for num_docs in (1, 2, 7, 40):
        counts = rng.integers(1, 12, size=num_docs)
        batches = _stream(counts, [(world_size, lanes)], [])
        _check_exactly_once(counts, batches)
        assert all(not s.restored for slots in batches for s in slots if s is not None)
        for lane in range(world_size * lanes):  # a lane idles only once nothing is left to take
            stream = [slots[lane] for slots in batches]
            first_idle = next((i for i, s in enumerate(stream) if s is None), len(stream))
            assert all(s is None for s in stream[first_idle:])


def test_schedule_resumed_on_every_other_shape_yields_each_segment_once() -> None:
    """World sizes 1-3 x lanes 1-5, resumed on every other shape at several positions (and back again)."""
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 9, size=30)
    for old in SHAPES:
        length = len(_stream(counts, [old], []))
        for new in SHAPES:
            if new == old:
                continue
            for cut in (1, length // 3, length // 2, length - 1):
                _check_exactly_once(counts, _stream(counts, [old, new, old], [cut, cut + 3]))


def test_schedule_same_global_lanes_is_an_exact_continuation() -> None:
    counts = np.random.default_rng(1).integers(1, 9, size=40)
    whole = _stream(counts, [(2, 4)], [])
    for shape in ((1, 8), (4, 2), (8, 1)):
        for cut in (1, 7, len(whole) - 1):
            assert _stream(counts, [(2, 4), shape], [cut]) == whole


def test_epoch_order_is_a_keyed_permutation() -> None:
    order = lambda n, seed, epoch: [EpochOrder(n, seed, epoch)[p] for p in range(n)]  # noqa: E731
    assert order(100, 1, 0) == order(100, 1, 0)
    assert order(100, 1, 0) != order(100, 1, 1) and order(100, 1, 0) != order(100, 2, 0)
    for n in (1, 2, 3, 5, 64, 65, 1000):
        assert sorted(order(n, 7, 2)) == list(range(n))
    # pinned: the order must not change across library versions (resume across upgrades)
    assert order(8, 0, 0) == [6, 2, 7, 0, 1, 3, 5, 4]
    assert order(8, 12345, 3) == [5, 3, 6, 7, 2, 4, 1, 0]
    # the array form the schedule deals with is the same order
    for n in (1, 3, 64, 65, 1000):
        epoch_order = EpochOrder(n, 7, 2)
        assert epoch_order.take(0, n).tolist() == order(n, 7, 2)
        assert epoch_order.take(n // 3, n - n // 3).tolist() == order(n, 7, 2)[n // 3 :]


def _slot_stream(schedule, lanes: int | None = None) -> tuple[list, dict]:
    """Every batch's slots of a schedule over 6 global lanes, re-spread to 4 before batch 5 and to 9 before batch 9;
    `lanes`: only the slots of global lanes [1, 1 + lanes) of each batch's shape. And the final state."""
    state, batches = schedule.fresh(6), []
    while True:
        if len(batches) in (5, 9):
            state = StreamState.from_dict(state.as_dict()).resize(4 if len(batches) == 5 else 9)
        slots = schedule.next_batch(state, None if lanes is None else range(1, 1 + lanes))
        if slots is None:
            return batches, state.as_dict()
        batches.append([None if s is None else (s.doc, s.segment, s.restored, s.epoch) for s in slots])


def test_schedule_is_pinned_across_versions_and_a_rank_takes_its_own_lanes() -> None:
    """The slots a schedule deals (one corpus and a mixture, through two resizes) must not change across library
    versions: a run resumed after an upgrade continues where it was. The digest is the per-lane loop's of the
    schedule before it was vectorised; a rank asking for its own lanes gets those lanes' slots of the whole batch."""
    counts = np.random.default_rng(7).integers(1, 9, size=50)
    schedules = [
        Schedule(counts, 11),
        MixtureSchedule([counts[:30], counts[30:]], [counts[:30] * 50, counts[30:] * 50], [2.0, 1.0], 11, 2),
    ]
    digest = hashlib.sha256()
    for schedule, length in zip(schedules, (32, 57)):
        whole, end = _slot_stream(schedule)
        assert len(whole) == length
        digest.update("".join(repr(slots) for slots in whole).encode())
        mine, mine_end = _slot_stream(schedule, lanes=2)
        assert mine == [slots[1:3] for slots in whole] and mine_end == end
    assert digest.hexdigest()[:16] == "a46df89cc405b515"


def test_version_1_position_continues_without_loss() -> None:
    """A version-1 (per-rank) position carried into the global schedule: the segments the old schedule emitted
    before it plus those the new one emits after it are every segment of the epoch once, in order."""
    counts = np.random.default_rng(2).integers(1, 9, size=25)
    for world_size, lanes, batch in ((1, 3, 4), (2, 2, 5), (3, 1, 2), (2, 3, 1)):
        order = epoch_order_v1(counts.size, 5, 0)
        emitted: dict[int, list[int]] = defaultdict(list)
        for rank in range(world_size):
            docs = order[rank::world_size]
            for doc, start in zip(docs.tolist(), assign_lanes_v1(counts[docs], lanes)[1]):
                emitted[doc] += list(range(min(counts[doc], max(0, batch - start))))
        state = state_from_v1(counts, 5, 0, batch, world_size, lanes)
        schedule = Schedule(counts, 5)
        while (slots := schedule.next_batch(state)) is not None:
            for slot in slots:
                if slot is not None:
                    emitted[slot.doc].append(slot.segment)
        assert {d: ks for d, ks in emitted.items() if ks} == {d: list(range(c)) for d, c in enumerate(counts)}


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
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "resets",
        "restore",
        "valid",
        "doc_ids",
        "doc_index",
        "segment_index",
        "epoch",
        "source",
        "bad_documents",
        "loader_cpu_s",
    }
    assert batch["bad_documents"] == []  # damaged documents met (tests/test_reliability.py)
    assert 0.0 < batch["loader_cpu_s"] < 60.0  # its thread's CPU seconds for this batch (reads, assembly)
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape[0] == 4
    assert batch["input_ids"].shape[1] <= SEGMENT_LENGTH + 2
    assert batch["attention_mask"].dtype == torch.bool and batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["resets"].dtype == torch.bool and batch["valid"].dtype == torch.bool and batch["resets"].all()
    assert batch["restore"].dtype == torch.bool and not batch["restore"].any()
    assert batch["doc_index"].dtype == torch.long and (batch["doc_index"][batch["valid"]] >= 0).all()
    assert batch["segment_index"].dtype == torch.long and isinstance(batch["doc_ids"], list)
    assert batch["epoch"].tolist() == [0] * 4 and batch["source"].tolist() == [0] * 4


def test_padding_lanes_when_a_rank_has_fewer_documents_than_lanes(shard_dir: Path) -> None:
    num_val = read_manifest(shard_dir)["splits"]["val"]["documents"]
    batches = _run(shard_dir, split="val", lanes=num_val + 2, seed=0)
    assert all(not b["valid"][-2:].any() for b in batches)
    assert sum(int((b["valid"] & b["resets"]).sum()) for b in batches) == num_val


TENSORS = ("input_ids", "attention_mask", "resets", "restore", "valid", "doc_index", "segment_index", "epoch", "source")


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["doc_ids"] == y["doc_ids"] and all(torch.equal(x[k], y[k]) for k in TENSORS) for x, y in zip(a, b)
    )


def _epoch_lengths(batches: list[dict]) -> list[int]:
    return [sum(1 for b in batches if _epoch(b) == e) for e in range(_epoch(batches[-1]) + 1)]


def _epoch(batch: dict) -> int:
    """The epoch of a batch of one corpus (every lane's document is of the stream's epoch)."""
    assert len(set(batch["epoch"].tolist())) == 1
    return int(batch["epoch"][0])


def test_epochs_seed_and_infinite_cycling(shard_dir: Path) -> None:
    loader = SegmentStreamLoader(shard_dir, "train", lanes=2, segment_length=SEGMENT_LENGTH, seed=3, epochs=2)
    batches = list(loader)
    n0, n1 = _epoch_lengths(batches)
    assert len(batches) == n0 + n1 and [_epoch(b) for b in batches] == [0] * n0 + [1] * n1
    first = [b["doc_ids"] for b in batches[:n0]]
    assert first != [b["doc_ids"] for b in batches[n0 : n0 + n0]]  # reshuffled
    assert _same(batches[:n0], _run(shard_dir, lanes=2, seed=3))  # epoch 0 of any loader with this seed
    assert not _same(batches[:n0], _run(shard_dir, lanes=2, seed=4))
    assert _same(list(loader), batches)  # a finished loader starts over
    forever = SegmentStreamLoader(shard_dir, "train", lanes=2, segment_length=SEGMENT_LENGTH, seed=3, epochs=None)
    head = list(itertools.islice(forever, n0 + n1 + 5))
    assert _same(head[: n0 + n1], batches) and _epoch(head[-1]) == 2


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_from_any_batch_yields_the_same_batches(shard_dir: Path, prefetch: int) -> None:
    settings = dict(rank=1, world_size=2, lanes=3, segment_length=SEGMENT_LENGTH, seed=9, epochs=2, prefetch=prefetch)
    full = list(SegmentStreamLoader(shard_dir, "train", **settings))
    n0 = _epoch_lengths(full)[0]
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
    with pytest.raises(ValueError, match=r"seed \(2, now 1\); resume with the same seed"):
        loader.load_state_dict(other.state_dict())
    val = SegmentStreamLoader(shard_dir, "val", lanes=2, segment_length=SEGMENT_LENGTH, seed=1)
    with pytest.raises(ValueError, match=r"split \('val', now 'train'\)"):
        loader.load_state_dict(val.state_dict())


def _elastic_run(shards: Path, shapes: list[tuple[int, int]], cut: int, seed: int = 9) -> list[list[dict]]:
    """Per shape, per rank, the batches: shape 0 for `cut` batches, then its state resumed on shape 1 to the end."""
    world_size, lanes = shapes[0]
    first = [
        SegmentStreamLoader(
            shards, "train", rank=r, world_size=world_size, lanes=lanes, seed=seed, segment_length=SEGMENT_LENGTH
        )
        for r in range(world_size)
    ]
    runs = [[list(itertools.islice(loader, cut)) for loader in first]]
    state = first[0].state_dict()
    assert all(loader.state_dict() == state for loader in first)  # the same global position on every rank
    world_size, lanes = shapes[1]
    second = []
    for r in range(world_size):
        loader = SegmentStreamLoader(
            shards, "train", rank=r, world_size=world_size, lanes=lanes, seed=seed, segment_length=SEGMENT_LENGTH
        )
        loader.load_state_dict(state)
        assert loader.resumed_from == (shapes[0] if shapes[0] != shapes[1] else None)
        second.append(list(loader))
    return runs + [second]


@pytest.mark.parametrize("shapes", [((2, 3), (1, 2)), ((1, 2), (3, 2)), ((2, 2), (1, 4)), ((3, 1), (2, 3))])
def test_elastic_resume_on_real_shards_yields_every_segment_once(shard_dir: Path, shapes) -> None:
    """Resumed on another world size / lane count: every segment once per epoch, in order; resets only at first
    segments; a document continued on another lane is flagged `restore`; all ranks yield as many batches."""
    docs = _documents(shard_dir)
    cut = 5
    runs = _elastic_run(shard_dir, list(shapes), cut)
    seen: dict[str, list[int]] = defaultdict(list)
    last: dict[str, tuple[int, int]] = {}  # key -> (global lane, global batch) of its last segment
    for phase, ranks in enumerate(runs):
        assert len({len(batches) for batches in ranks}) == 1
        for rank, batches in enumerate(ranks):
            for b, batch in enumerate(batches):
                lanes = batch["input_ids"].shape[0]
                for lane in range(lanes):
                    if not batch["valid"][lane]:
                        continue
                    key, k = batch["doc_ids"][lane], int(batch["segment_index"][lane])
                    here = (rank * lanes + lane, b + phase * cut)
                    seen[key].append(k)
                    assert bool(batch["resets"][lane]) == (k == 0)
                    if k:  # on the same global lane at the next batch, the lane's memory is the document's
                        assert bool(batch["restore"][lane]) == (last[key] != (here[0], here[1] - 1)), (key, k)
                    last[key] = here
    assert set(seen) == set(docs)
    assert all(ks == list(range(docs[key][1].size)) for key, ks in seen.items())
    restored = sum(int(b["restore"].sum()) for batches in runs[1] for b in batches)
    (w0, l0), (w1, l1) = shapes
    assert (restored > 0) == (w1 * l1 < w0 * l0)  # documents wait for a lane only when lanes were taken away


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


def _noise_stand_in(batch: dict) -> dict:
    """A transform a producer process can unpickle (a module's function): what the noiser does, in small."""
    return batch | {"labels": batch["input_ids"].masked_fill(~batch["attention_mask"], -100)}


def _failing_transform(batch: dict) -> dict:
    raise DataError("noiser broke in the producer")


def test_a_producer_process_makes_the_same_batches_and_positions_as_the_thread(shard_dir: Path) -> None:
    settings = dict(rank=1, world_size=2, lanes=3, segment_length=SEGMENT_LENGTH, seed=9, epochs=2, prefetch=3,
                    transform=_noise_stand_in)  # fmt: skip
    full = list(SegmentStreamLoader(shard_dir, "train", **settings))
    assert all(torch.equal(b["labels"], _noise_stand_in(b)["labels"]) for b in full)
    for cut in (0, 7, len(full) // 2 + 3):
        loader = SegmentStreamLoader(shard_dir, "train", **settings, producer="process")
        head = list(itertools.islice(loader, cut))
        assert loader.producer_pid is None  # the loop left early: its process was stopped
        resumed = SegmentStreamLoader(shard_dir, "train", **settings, producer="process")
        resumed.load_state_dict(loader.state_dict())
        assert _same(head + list(resumed), full), cut
        assert all(b["loader_cpu_s"] > 0.0 for b in head)  # measured in the producer process
    with pytest.raises(DataError, match="noiser broke in the producer"):  # its errors reach the loop, type kept
        list(SegmentStreamLoader(shard_dir, "val", lanes=2, segment_length=SEGMENT_LENGTH, producer="process",
                                 transform=_failing_transform))  # fmt: skip


def test_a_producer_process_ignores_the_schedulers_signals_and_its_death_is_an_error(shard_dir: Path) -> None:
    """Slurm signals the whole process group: the trainer checkpoints on SIGTERM / SIGUSR1, so the producer must
    keep going; a producer killed (e.g. by the OOM killer) stops the loop with an error naming it."""
    loader = SegmentStreamLoader(shard_dir, "train", lanes=2, segment_length=SEGMENT_LENGTH, epochs=None, prefetch=2,
                                 producer="process")  # fmt: skip
    batches = iter(loader)
    next(batches)
    pid = loader.producer_pid
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        os.kill(pid, signum)
    time.sleep(0.5)
    for _ in range(20):  # more than the prefetched ones: made after the signals
        next(batches)
    assert loader.producer_pid == pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(DataError, match=rf"producer process \(pid {pid}\) exited with code -9"):
        for _ in range(100):
            next(batches)


def test_a_process_that_exits_mid_iteration_does_not_wait_for_its_producer(shard_dir: Path) -> None:
    """multiprocessing's exit hook sends SIGTERM to daemon children and waits for them; a producer ignores SIGTERM,
    so the loader kills its producers at exit first (a trainer leaving on an error would otherwise hang)."""
    script = (
        "import sys\nfrom memformers.data import SegmentStreamLoader\n"
        "if __name__ == '__main__':\n"
        f"    batches = iter(SegmentStreamLoader({str(shard_dir)!r}, 'train', lanes=2, segment_length={SEGMENT_LENGTH},"
        " epochs=None, producer='process'))\n"
        "    next(batches)\n    sys.exit(3)\n"
    )
    path = shard_dir.parent / "exits_mid_iteration.py"
    path.write_text(script)
    assert subprocess.run([sys.executable, str(path)], timeout=120).returncode == 3


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
    with pytest.raises(ValueError, match=r"producer must be one of \('thread', 'process'\), got 'fork'"):
        SegmentStreamLoader(shard_dir, "train", lanes=2, segment_length=SEGMENT_LENGTH, producer="fork")
    with pytest.raises(DataError, match="no manifest.json"):
        SegmentStreamLoader(shard_dir / "train", "train", lanes=2, segment_length=SEGMENT_LENGTH)
