"""The failure paths of a cluster run, each with what the user sees: start-up mistakes (one line, exit 2 on every
rank, no run_dir left behind), damaged checkpoints (fall back to the newest intact one), damaged shards during
training (skipped, counted, and a stop past data.max_bad_documents), stalled or dead ranks (the others exit 4
within train.collective_timeout_s), and loss spikes (skipped like non-finite steps).

Real trainer processes (CPU, gloo), real shards and real checkpoints throughout; the data prep scripts' failure
paths are tested beside their scripts (test_data_*.py)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run_args
from launch import Ranks, cpu_env, free_port, run

from memformers.data import SegmentStreamLoader, SplitReader
from memformers.models.membart import MemBartForConditionalGeneration, load_preset
from memformers.training.checkpoint import CONTENTS, DAMAGED, Checkpointer, CheckpointError
from memformers.training.distributed import Runtime
from memformers.training.metrics import read_run_metrics

TRAIN = "pretrain/train.py"
FAST = ("eval.every_steps=0", "eval.max_batches=1")


def trainer(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """One trainer process, on its own rendezvous port (several run side by side)."""
    return run([sys.executable, TRAIN, *args], env=cpu_env(MASTER_PORT=str(free_port()), **env), check=False)


def flip_byte_in(shards: Path, doc: int) -> None:
    """Damage train document `doc` of a SHARD_DIR in place: one byte in the middle of its span flipped."""
    reader = SplitReader(shards, "train")
    row = reader.index[doc]
    path = shards / reader.shards[int(row["shard"])]
    data = bytearray(path.read_bytes())
    data[int(row["offset"]) + int(row["length"]) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------- start-up mistakes


def tiny_membart(path: Path, **overrides) -> str:
    """A saved tiny MemBART (what model.init_from takes) for the tiny corpus's tokenizer, but for `overrides`."""
    ids = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)
    config = load_preset("tiny", **{"vocab_size": 608, **ids, **overrides})
    MemBartForConditionalGeneration(config).save_pretrained(path)
    return str(path)


def startup_cases(root: Path, shards: Path) -> dict[str, tuple[list[str], dict, list[str]]]:
    """id → (trainer arguments, extra environment, words stderr must hold): every mistake a user can make before
    the first step, each set up under `root`."""
    (root / "bad.yaml").write_text(f"run_dir: {root / 'r'}\ndata:\n  path: {shards}\n  lanes 2\n")
    (root / "bad.json").write_text('{"zero_optimization": {"stage": 2},\n')
    (root / "stage7.json").write_text('{"zero_optimization": {"stage": 7}}')
    (root / "not-shards").mkdir()
    shutil.copytree(shards, root / "bad-manifest")
    (root / "bad-manifest" / "manifest.json").write_text('{"format": ')
    shutil.copytree(shards, root / "truncated")
    shard = next((root / "truncated" / "train").glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[:1000])
    (root / "a-file").write_text("")
    models = root / "models"
    short, other_pad, small = models / "short", models / "other-pad", models / "small-vocab"
    tiny_membart(short, max_position_embeddings=32)
    tiny_membart(other_pad, pad_token_id=3)
    tiny_membart(small, vocab_size=300)

    def args(*extra: str) -> list[str]:
        return tiny_run_args(root / "run", shards, "train.max_steps=1", *FAST, *extra)

    return {
        "yaml-file": (["--config", str(root / "bad.yaml")], {}, [f"config file {root / 'bad.yaml'}, line 5"]),
        "yaml-override": (args("train.betas=[0.9,"), {}, ["override 'train.betas=[0.9,'", "not valid YAML"]),
        "unknown-key": (args("train.max_step=3"), {}, ["unknown config key 'train.max_step'", "max_steps"]),
        "bad-value": (args("data.max_bad_documents=-1"), {}, ["data.max_bad_documents must be >= 0"]),
        "ds-missing": (args(f"deepspeed={root / 'nope.json'}"), {}, ["nope.json does not exist"]),
        "ds-invalid": (args(f"deepspeed={root / 'bad.json'}"), {}, ["bad.json: invalid JSON at line 2"]),
        "ds-rejected": (args(f"deepspeed={root / 'stage7.json'}"), {}, ["stage7.json: DeepSpeed rejects it", "stage"]),
        "not-a-shard-dir": (args(f"data.path={root / 'not-shards'}"), {}, ["is not a shard directory"]),
        "bad-manifest": (args(f"data.path={root / 'bad-manifest'}"), {}, ["manifest.json", "re-run"]),
        "truncated-shard": (args(f"data.path={root / 'truncated'}"), {}, [shard.name, "truncated or replaced"]),
        "positions": (args(f"model.init_from={short}"), {}, ["segments of 48 tokens need 52 positions", "has 32"]),
        "special-ids": (args(f"model.init_from={other_pad}"), {}, ["other special token ids", "pad 3"]),
        "vocab": (args(f"model.init_from={small}"), {}, ["vocab_size 300 is smaller than", "600"]),
        "no-model": (args(f"model.init_from={models / 'nope'}"), {}, ["nope does not exist", "hub id"]),
        "not-a-model": (args(f"model.init_from={models}"), {}, ["no config.json there"]),
        "run-dir-is-a-file": (
            tiny_run_args(root / "a-file", shards, *FAST),
            {},
            ["a-file exists and is not a directory"],
        ),
        "debug-traceback": (args(f"deepspeed={root / 'nope.json'}"), {"MEMFORMERS_DEBUG": "1"}, ["Traceback"]),
    }


@pytest.fixture(scope="module")
def startup_failures(tiny_shards, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, list[str]]]:
    """Every start-up case run once, two at a time: id → (the finished process, the words expected)."""
    root = tmp_path_factory.mktemp("startup")
    cases = startup_cases(root, tiny_shards)
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(cases, pool.map(lambda case: trainer(case[0], **case[1]), cases.values())))
    assert not (root / "run").exists()  # no case left a run_dir behind
    return {name: (procs[name], cases[name][2]) for name in cases}


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    ["yaml-file", "yaml-override", "unknown-key", "bad-value", "ds-missing", "ds-invalid", "ds-rejected",
     "not-a-shard-dir", "bad-manifest", "truncated-shard", "positions", "special-ids", "vocab", "no-model",
     "not-a-model", "run-dir-is-a-file", "debug-traceback"],
)  # fmt: skip
def test_startup_mistakes_are_one_line_and_exit_2(startup_failures, case):
    proc, words = startup_failures[case]
    assert proc.returncode == 2, proc.stderr[-3000:]
    for word in words:
        assert word in proc.stderr, (word, proc.stderr[-3000:])
    if case != "debug-traceback":
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, proc.stderr[-3000:]


@pytest.mark.distributed
def test_a_startup_mistake_exits_2_on_every_rank(tiny_shards, tmp_path):
    (tmp_path / "bad.json").write_text("{")
    args = tiny_run_args(tmp_path / "run", tiny_shards, f"deepspeed={tmp_path / 'bad.json'}", *FAST)
    ranks = Ranks(TRAIN, args, nproc=2, log_dir=tmp_path)
    assert ranks.wait(timeout=120) == [2, 2], ranks.output()[-3000:]
    assert ranks.output().count("bad.json: invalid JSON at line 1") == 2
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def checkpointed_run(tiny_shards, tmp_path_factory) -> Path:
    """A finished one-process run of 3 steps with a checkpoint at every step (kept: all three)."""
    run_dir = tmp_path_factory.mktemp("checkpointed") / "run"
    proc = trainer(
        tiny_run_args(run_dir, tiny_shards, "train.max_steps=3", "checkpoint.every_steps=1", "checkpoint.keep=3", *FAST)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def optimizer_states(tag_dir: Path) -> Path:
    return next(tag_dir.glob("*optim_states.pt"))


DAMAGE = {  # id → (what to do to the newest checkpoint, words naming what is wrong)
    "optimizer-states-deleted": (lambda tag: optimizer_states(tag).unlink(), "rank 0's optimizer states"),
    "model-states-truncated": (
        lambda tag: os.truncate(tag / "mp_rank_00_model_states.pt", 100),
        "model states mp_rank_00_model_states.pt",
    ),
    "trainer-state-truncated": (lambda tag: os.truncate(tag / "trainer_state.json", 10), "trainer_state.json has 10"),
    "rank-state-deleted": (lambda tag: (tag / "rank-00000.pt").unlink(), "rank 0's trainer state"),
    "latest-names-a-missing-tag": (lambda tag: shutil.rmtree(tag), "step-00000003 does not exist"),
}


def checkpoints_copy(run_dir: Path, into: Path) -> Checkpointer:
    shutil.copytree(run_dir / "checkpoints", into / "checkpoints")
    return Checkpointer(into / "checkpoints", keep=3, runtime=Runtime(0, 0, 1, torch.device("cpu")))


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_named_set_aside_and_the_previous_one_resumed(checkpointed_run, tmp_path, damage):
    checkpointer = checkpoints_copy(checkpointed_run, tmp_path)
    harm, words = DAMAGE[damage]
    harm(checkpointer.root / "step-00000003")
    tag, notes = checkpointer.intact_tag()
    assert tag == "step-00000002"
    assert "checkpoint step-00000003 is damaged: " in notes[0] and words in notes[0], notes
    assert notes[-1] == "resuming from step-00000002, the newest intact checkpoint"
    assert (checkpointer.root / "latest").read_text() == "step-00000002"
    assert not (checkpointer.root / "step-00000003").exists()
    assert (checkpointer.root / DAMAGED / "step-00000003").is_dir() == (damage != "latest-names-a-missing-tag")


@pytest.mark.slow
def test_intact_checkpoints_are_resumed_and_older_ones_without_contents_accepted(checkpointed_run, tmp_path):
    checkpointer = checkpoints_copy(checkpointed_run, tmp_path)
    assert checkpointer.intact_tag() == ("step-00000003", [])
    for tag in ("step-00000002", "step-00000003"):  # as written before contents.json existed
        (checkpointer.root / tag / CONTENTS).unlink()
    (checkpointer.root / "step-00000003" / "rank-00000.pt").unlink()
    assert checkpointer.intact_tag()[0] == "step-00000002"


@pytest.mark.slow
def test_no_intact_checkpoint_is_one_error_listing_what_was_found(checkpointed_run, tmp_path):
    checkpointer = checkpoints_copy(checkpointed_run, tmp_path)
    for tag in ("step-00000001", "step-00000002", "step-00000003"):
        optimizer_states(checkpointer.root / tag).unlink()
    with pytest.raises(CheckpointError, match="no intact checkpoint in") as error:
        checkpointer.intact_tag()
    assert all(f"step-0000000{n}: rank 0's optimizer states" in str(error.value) for n in (1, 2, 3))
    assert not (checkpointer.root / DAMAGED).exists()  # nothing moved: the files can still be restored


@pytest.mark.slow
def test_a_resume_over_a_deleted_optimizer_file_falls_back_and_finishes(checkpointed_run, tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(checkpointed_run, run_dir)
    optimizer_states(run_dir / "checkpoints" / "step-00000003").unlink()
    proc = trainer(tiny_run_args(run_dir, tiny_shards, "train.max_steps=4", "checkpoint.keep=3", *FAST))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert "checkpoint step-00000003 is damaged: rank 0's optimizer states" in text and "is missing" in text
    assert "resumed from step-00000002 at step 2" in text and "done: step 4" in text
    steps, _ = read_run_metrics(run_dir)
    assert [r["step"] for r in steps] == [1, 2, 3, 4]  # step 3 trained again from step 2's checkpoint


@pytest.mark.slow
def test_a_checkpoint_damaged_inside_its_files_is_refused_with_what_to_do(checkpointed_run, tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(checkpointed_run, run_dir)
    states = optimizer_states(run_dir / "checkpoints" / "step-00000003")
    states.write_bytes(b"\0" * states.stat().st_size)  # the size it was written with, not its content
    proc = trainer(tiny_run_args(run_dir, tiny_shards, "train.max_steps=4", *FAST))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "content is damaged" in proc.stderr and f"{DAMAGED}/ to resume from the checkpoint before it" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------- damaged data in training


def first_documents(shards: Path, lanes: int, seed: int, count: int) -> list[int]:
    """The first `count` distinct train documents the stream deals to `lanes` global lanes."""
    loader = SegmentStreamLoader(shards, "train", lanes=lanes, segment_length=48, seed=seed, prefetch=0)
    seen: list[int] = []
    for batch in loader:
        seen += [int(d) for d in batch["doc_index"] if d >= 0 and int(d) not in seen]
        if len(seen) >= count:
            return seen[:count]
    raise AssertionError("the split has fewer documents")


@pytest.fixture(scope="module")
def damaged_shards(tiny_shards, tmp_path_factory) -> tuple[Path, list[int]]:
    """A copy of tiny_shards with two of the first train documents a 2-lane run meets damaged (seed 1234)."""
    shards = tmp_path_factory.mktemp("damaged") / "shards"
    shutil.copytree(tiny_shards, shards)
    damaged = first_documents(shards, 2, 1234, 3)[1:]
    for doc in damaged:
        flip_byte_in(shards, doc)
    return shards, damaged


def test_the_loader_skips_a_damaged_document_as_padding_and_resumes_the_same(damaged_shards):
    shards, damaged = damaged_shards
    reader = SplitReader(shards, "train")
    make = lambda: SegmentStreamLoader(shards, "train", lanes=2, segment_length=48, seed=1234, prefetch=0)  # noqa: E731
    batches = list(make())
    yielded, reports = {}, []
    for batch in batches:
        reports += [(int(bad["document"]), bad["key"], bad["description"]) for bad in batch["bad_documents"]]
        for doc, segment in zip(batch["doc_index"].tolist(), batch["segment_index"].tolist()):
            if doc >= 0:
                yielded.setdefault(doc, []).append(segment)
    counts = reader.segment_counts  # every other document whole and in order; each damaged one reported once
    assert sorted(yielded) == sorted(set(range(len(reader))) - set(damaged))
    assert all(yielded[doc] == list(range(int(counts[doc]))) for doc in yielded)
    assert sorted(doc for doc, _, _ in reports) == sorted(damaged)
    for doc, key, description in reports:
        assert key == reader.key_at(doc) and key.startswith("train-") and "does not match its checksum" in description
        assert reader.shards[int(reader.index[doc]["shard"])] in description

    # resumed while a lane is inside a damaged document: the same batches (the lane re-reads it and reports it)
    met = next(i for i, batch in enumerate(batches) if batch["bad_documents"])
    first = make()
    iterator = iter(first)
    for _ in range(met + 2):
        next(iterator)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    again = list(resumed)
    assert [b["input_ids"].tolist() for b in again] == [b["input_ids"].tolist() for b in batches[met + 2 :]]
    assert {bad["document"] for b in again for bad in b["bad_documents"]} <= set(damaged)


@pytest.mark.slow
def test_damaged_documents_are_skipped_counted_stop_the_run_past_the_limit_and_resume_exactly(damaged_shards, tmp_path):
    shards, damaged = damaged_shards
    common = ("data.lanes=2", "train.max_steps=14", "checkpoint.every_steps=100", *FAST)
    reference = tmp_path / "reference"
    proc = trainer(tiny_run_args(reference, shards, *common, "data.max_bad_documents=5"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps, _ = read_run_metrics(reference)
    assert steps[-1]["skipped_documents"] == 2 and steps[0]["skipped_documents"] >= 1

    stopped = tmp_path / "stopped"
    proc = trainer(tiny_run_args(stopped, shards, *common, "data.max_bad_documents=1"))
    assert proc.returncode == 5, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    reader = SplitReader(shards, "train")
    for doc in damaged:
        assert "skipped a damaged document" in text and f"(key {reader.key_at(doc)})" in text
    assert "2 damaged documents skipped, more than data.max_bad_documents=1" in text
    at = read_run_metrics(stopped)[0][-1]["step"]
    assert (stopped / "checkpoints" / "latest").read_text() == f"step-{at:08d}" and at < 14

    proc = trainer(tiny_run_args(stopped, shards, *common, "data.max_bad_documents=5"))  # raised: resume
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped a damaged document" not in proc.stdout + proc.stderr  # known already, not reported again
    assert [(r["step"], r["loss"], r["skipped_documents"]) for r in read_run_metrics(stopped)[0]] == [
        (r["step"], r["loss"], r["skipped_documents"]) for r in steps
    ]


# ---------------------------------------------------------------------------------------- stalled or dead ranks


def wait_for_first_step(run_dir: Path, ranks: Ranks, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").is_file() and read_run_metrics(run_dir)[0]:
            return
        assert all(p.poll() is None for p in ranks.procs), ranks.output()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no step within {timeout}s:\n{ranks.output()[-3000:]}")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("fault", ["SIGSTOP", "SIGKILL"])
def test_a_stalled_or_dead_rank_makes_the_other_exit_within_the_timeout(tiny_shards, tmp_path, fault):
    timeout = 15
    args = tiny_run_args(
        tmp_path / "run", tiny_shards, "train.max_steps=100000", "checkpoint.every_steps=100000",
        f"train.collective_timeout_s={timeout}", *FAST,
    )  # fmt: skip
    ranks = Ranks(TRAIN, args, nproc=2, log_dir=tmp_path)
    try:
        wait_for_first_step(tmp_path / "run", ranks)
        os.kill(ranks.procs[1].pid, getattr(signal, fault))
        faulted = time.time()
        ranks.procs[0].wait(timeout=timeout + 60)
        waited = time.time() - faulted
    finally:
        ranks.kill()
    output = ranks.output()
    assert ranks.procs[0].returncode == 4, output[-3000:]
    if fault == "SIGSTOP":  # the collective waits out the timeout, then the health barrier names the rank (<= 5 s)
        assert timeout - 1 < waited < timeout + 20, waited
        assert "error: a collective timed out on rank 0" in output and "rank(s) 1 did not answer" in output
    else:  # a dead peer's connection closes at once
        assert waited < timeout, waited
        assert "error: a collective failed on rank 0" in output and "connection closed (it died)" in output


# ----------------------------------------------------------------------------------------------------- loss spikes


@pytest.fixture(scope="module")
def gibberish_shards(tiny_shards, tmp_path_factory) -> Path:
    """A SHARD_DIR (tiny_shards' tokenizer and segment length) of random letter strings: much harder to denoise than
    the synthetic corpus, so a rollout that meets one is a loss spike."""
    root = tmp_path_factory.mktemp("gibberish")
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    with open(root / "gibberish.jsonl", "w") as out:
        for _ in range(30):
            words = ("".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(300))
            out.write(json.dumps({"text": " ".join(words) + "."}) + "\n")
    shard = [sys.executable, "data_prep/shard_documents.py", "--input", str(root / "gibberish.jsonl")]
    run([*shard, "--tokenizer", str(tiny_shards.parent / "tokenizer"), "--output", str(root / "shards"),
         "--segment-length", "48", "--val-fraction", "0"])  # fmt: skip
    return root / "shards"


@pytest.mark.slow
def test_loss_spikes_skip_their_update_as_the_rule_says(tiny_shards, gibberish_shards, tmp_path):
    factor, window = 1.05, 5
    sources = (
        f"data.sources=[{{path: {tiny_shards}, weight: 4}}, {{path: {gibberish_shards}, weight: 1, name: gibberish}}]"
    )
    args = tiny_run_args(
        tmp_path / "run", tiny_shards, "data.path=", sources, "train.max_steps=30", "train.max_nonfinite_steps=30",
        f"train.loss_spike_factor={factor}", f"train.loss_spike_window={window}", *FAST,
    )  # fmt: skip
    proc = trainer(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps, _ = read_run_metrics(tmp_path / "run")
    history, expected = [], []  # the rule, replayed on the logged losses (one rollout per step)
    for record in steps:
        spike = len(history) >= window and record["loss"] > factor * float(np.median(history))
        expected.append(spike)
        if not spike:
            history = (history + [record["loss"]])[-window:]
    assert [r["loss_spike"] for r in steps] == expected and any(expected)
    assert all((r["grad_norm"] is None) == r["loss_spike"] for r in steps)  # DeepSpeed skipped exactly those
    assert steps[-1]["skipped_steps"] == sum(expected)
    assert "loss spike (train.loss_spike_factor), update skipped" in proc.stdout + proc.stderr
