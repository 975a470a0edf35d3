"""Corpus mixtures: the mixture schedule (pure), the loader over several real SHARD_DIRs, and a real training run
on `data.sources` (token shares by weight, exact resume, per-source evaluation)."""

from __future__ import annotations

import itertools
import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SEGMENT_LENGTH, tiny_run_args
from launch import cpu_env, free_port, run

from memformers.data import DataError, MixtureSchedule, SegmentStreamLoader

# -- the schedule, pure ---------------------------------------------------------------------------------


def _mixture(sizes=(30, 7), weights=(3.0, 1.0), epochs=None, seed=3):
    rng = np.random.default_rng(sum(sizes))
    counts = [rng.integers(1, 9, size=n) for n in sizes]
    tokens = [c * 40 + rng.integers(0, 40, size=c.size) for c in counts]
    return MixtureSchedule(counts, tokens, list(weights), seed, epochs), counts, tokens


def _run(schedule, shapes, cuts, limit=10_000):
    """Batches of slots (per global lane), re-spread to shapes[i + 1] before batch cuts[i] through the saved form."""
    state = schedule.fresh(shapes[0][0] * shapes[0][1])
    out, pending = [], list(zip(cuts, shapes[1:]))
    while len(out) < limit:
        if pending and len(out) == pending[0][0]:
            world_size, lanes = pending.pop(0)[1]
            state = type(state).from_dict(state.as_dict()).resize(world_size * lanes)
        slots = schedule.next_batch(state)
        if slots is None:
            break
        out.append(slots)
    return out, state


def test_token_shares_follow_the_weights():
    schedule, counts, tokens = _mixture(weights=(3.0, 1.0))
    batches, _ = _run(schedule, [(2, 4)], [], limit=3000)
    trained = np.zeros(2)
    for slots in batches:
        for slot in filter(None, slots):
            source, local = schedule.source_of(slot.doc)
            trained[source] += tokens[source][local] / counts[source][local]  # a segment's share of its document
    share = trained / trained.sum()
    assert abs(share[0] - 0.75) < 0.01 and abs(share[1] - 0.25) < 0.01, share


def test_each_corpus_runs_its_own_epochs_exactly_once_each_and_the_first_to_finish_ends_the_stream():
    schedule, counts, _ = _mixture(sizes=(30, 7), weights=(1.0, 1.0), epochs=3)
    batches, state = _run(schedule, [(1, 5)], [])
    seen = defaultdict(list)  # (doc, epoch) -> segments
    for slots in batches:
        for slot in filter(None, slots):
            seen[(slot.doc, slot.epoch)].append(slot.segment)
    for (doc, _), segments in seen.items():
        source, local = schedule.source_of(doc)
        assert segments == list(range(counts[source][local]))  # whole, in order, once per epoch
    small = {epoch for doc, epoch in seen if schedule.source_of(doc)[0] == 1}
    assert small == {0, 1, 2}  # the small corpus ran its 3 passes ...
    assert all(sum(1 for d, e in seen if d == doc and e == epoch) == 1 for doc, epoch in seen)
    assert [cursor[0] for cursor in state.sources] == [0, 2]  # ... and ended the stream; the large one is in pass 1
    assert state.sources[1][1] == 7


def test_mixture_resumed_on_other_shapes_is_exactly_once_and_exact_with_the_same_global_lanes():
    schedule, counts, _ = _mixture(epochs=2)
    whole, _ = _run(schedule, [(2, 3)], [])
    for shape in ((1, 6), (3, 2), (6, 1)):
        for cut in (1, 9, len(whole) - 1):
            assert _run(schedule, [(2, 3), shape], [cut])[0] == whole
    for shapes in (((2, 3), (1, 2)), ((1, 2), (3, 3))):
        batches, _ = _run(schedule, list(shapes), [len(whole) // 3])
        seen = defaultdict(list)
        for slots in batches:
            for slot in filter(None, slots):
                seen[(slot.doc, slot.epoch)].append(slot.segment)
        for (doc, _), segments in seen.items():
            source, local = schedule.source_of(doc)
            assert segments == list(range(counts[source][local])), (shapes, doc)


# -- the loader on real shards ----------------------------------------------------------------------------


def _loader(sources, **kwargs) -> SegmentStreamLoader:
    settings = dict(weights=[3, 1], lanes=4, segment_length=SEGMENT_LENGTH, seed=5, epochs=None, prefetch=0)
    settings.update(kwargs)
    return SegmentStreamLoader(sources, "train", **settings)


def test_loader_mixes_two_corpora_by_tokens(tiny_shards, second_shards):
    loader = _loader([tiny_shards, second_shards], names=["books", "wiki"])
    tokens = np.zeros(2)
    for batch in itertools.islice(loader, 1200):
        valid = batch["valid"]
        np.add.at(tokens, batch["source"][valid].numpy(), batch["attention_mask"][valid].sum(1).numpy())
        for lane in np.flatnonzero(valid.numpy()):
            assert batch["doc_ids"][lane].startswith(("books/", "wiki/")[int(batch["source"][lane])])
    share = tokens / tokens.sum()
    assert abs(share[0] - 0.75) < 0.03, share
    books, wiki = loader.passes_done()
    assert books > wiki > 1  # each corpus through its own passes: books (3x the weight, 2x the size) more often


def test_loader_resume_is_exact_and_refuses_other_weights(tiny_shards, second_shards):
    full = list(itertools.islice(_loader([tiny_shards, second_shards], world_size=2, rank=1, lanes=2), 60))
    head = _loader([tiny_shards, second_shards], world_size=2, rank=1, lanes=2)
    list(itertools.islice(head, 25))
    state = head.state_dict()
    for world_size, lanes, rank in ((2, 2, 1), (1, 4, 0)):  # the same global lanes: the same batches
        resumed = _loader([tiny_shards, second_shards], world_size=world_size, rank=rank, lanes=lanes)
        resumed.load_state_dict(state)
        tail = list(itertools.islice(resumed, 35))
        for a, b in zip(full[25:], tail):
            mine = slice(0, 2) if world_size == 2 else slice(2, 4)  # rank 1's lanes are global lanes 2, 3
            assert a["doc_ids"] == b["doc_ids"][mine]
            assert torch.equal(
                a["input_ids"][:, : b["input_ids"][mine].shape[1]], b["input_ids"][mine, : a["input_ids"].shape[1]]
            )
    other = _loader([tiny_shards, second_shards], weights=[1, 1], world_size=2, rank=1, lanes=2)
    with pytest.raises(ValueError, match=r"weights \(\[3.0, 1.0\], now \[1.0, 1.0\]\)"):
        other.load_state_dict(state)


def test_corpora_with_different_tokenizers_cannot_be_mixed(tiny_shards, shard_dir):
    with pytest.raises(DataError, match="tokenizer") as error:
        _loader([tiny_shards, shard_dir])
    assert str(tiny_shards) in str(error.value) and str(shard_dir) in str(error.value)


# -- a real training run ------------------------------------------------------------------------------------

TRAIN = "pretrain/train.py"


def _train(run_dir: Path, tiny_shards: Path, second_shards: Path, *extra: str):
    sources = f"data.sources=[{{path: {tiny_shards}, weight: 3, name: books}}, {{path: {second_shards}, weight: 1}}]"
    args = tiny_run_args(run_dir, tiny_shards, "data.path=", sources, "train.max_steps=12", "checkpoint.every_steps=6",
                         "eval.every_steps=6", "data.lanes=4", *extra)  # fmt: skip
    return run([sys.executable, TRAIN, *args], env=cpu_env(MASTER_PORT=str(free_port())))


def _records(run_dir: Path):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "loss" in x], [x for x in lines if "eval_loss" in x]


@pytest.fixture(scope="module")
def mixture_run(tiny_shards, second_shards, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("mixture") / "run"
    _train(run_dir, tiny_shards, second_shards)
    return run_dir


@pytest.mark.slow
def test_training_on_a_mixture_logs_tokens_and_evaluation_by_source(mixture_run):
    steps, evals = _records(mixture_run)
    assert [s["step"] for s in steps] == list(range(1, 13))
    for record in steps:
        assert set(record["tokens_by_source"]) == {"books", "second-shards"}
        assert sum(record["tokens_by_source"].values()) == record["tokens"]
        assert set(record["passes_by_source"]) == {"books", "second-shards"}
    last = steps[-1]["tokens_by_source"]
    assert 0.6 < last["books"] / steps[-1]["tokens"] < 0.9  # a short run: near 3:1, within a document or two
    assert [e["step"] for e in evals] == [6, 12]
    for e in evals:
        for key in ("eval_loss_by_source", "eval_loss_no_memory_by_source", "memory_gain_by_source"):
            assert set(e[key]) == {"books", "second-shards"}
        gains = e["memory_gain_by_source"]
        assert all(
            gains[n] == pytest.approx(e["eval_loss_no_memory_by_source"][n] - e["eval_loss_by_source"][n])
            for n in gains
        )
        assert min(e["eval_loss_by_source"].values()) <= e["eval_loss"] <= max(e["eval_loss_by_source"].values())


@pytest.mark.slow
def test_a_mixture_run_resumes_exactly(mixture_run, tiny_shards, second_shards, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(mixture_run, run_dir)
    checkpoints = run_dir / "checkpoints"
    shutil.rmtree(checkpoints / "step-00000012")
    (checkpoints / "latest").write_text("step-00000006")
    out = _train(run_dir, tiny_shards, second_shards)
    assert "resumed from step-00000006" in out.stdout
    exact = lambda d: [(s["step"], s["loss"], s["grad_norm"], s["tokens_by_source"]) for s in _records(d)[0]]  # noqa: E731
    assert exact(run_dir) == exact(mixture_run)
    evals = lambda d: [(e["step"], e["eval_loss_by_source"]) for e in _records(d)[1]]  # noqa: E731
    assert evals(run_dir) == evals(mixture_run)


@pytest.mark.slow
def test_evaluate_gives_the_mixture_runs_own_per_source_figures(mixture_run, tiny_shards, second_shards):
    from memformers.evaluate import evaluate_corpora, load_eval_model

    result = evaluate_corpora(load_eval_model(str(mixture_run)), [tiny_shards, second_shards])
    logged = _records(mixture_run)[1][-1]
    assert result["eval_loss"] == pytest.approx(logged["eval_loss"], abs=1e-5)
    assert list(result["eval_loss_by_source"].values()) == pytest.approx(
        list(logged["eval_loss_by_source"].values()), abs=1e-5
    )  # the same sources in the same order (evaluate names them by folder)
