"""Elastic resume end to end: a run checkpointed on one shape (ranks x lanes) resumes on another, with real DeepSpeed
(CPU, gloo, fp32), the tiny model and real shards.

Same global lane count (2x2 -> 1x4 with ZeRO-2 and ZeRO-3, 1x4 -> 2x2): the losses after the resume are the
uninterrupted run's, within float summation order. Fewer global
lanes (2x2 -> 1x2): the documents in flight wait with their memory parked and continue when a lane frees; the run
finishes. The stream's exactly-once guarantee under every change of shape is tested on the schedule and the loader
(tests/test_data_loader.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_run_args
from launch import run, torchrun_cmd

TRAIN = "pretrain/train.py"
STEPS = ("train.max_steps=6", "checkpoint.every_steps=3", "checkpoint.keep=3", "eval.every_steps=0")
ZERO = {2: {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
        3: {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
            "stage3_param_persistence_threshold": 1e5}}  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return {x["step"]: x["loss"] for x in lines if "loss" in x}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]


def train(run_dir: Path, shards: Path, nproc: int, lanes: int, ds_config: Path, *extra: str):
    args = tiny_run_args(run_dir, shards, f"data.lanes={lanes}", f"deepspeed={ds_config}", *STEPS, *extra)
    return run(torchrun_cmd(TRAIN, args, nproc=nproc))


def from_checkpoint(run_dir: Path, tag: str, into: Path) -> Path:
    """A copy of `run_dir` as it was when checkpoint `tag` was the latest (later steps' metrics are dropped by the
    resumed run itself)."""
    (into / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_dir / "checkpoints" / tag, into / "checkpoints" / tag)
    (into / "checkpoints" / "latest").write_text(tag)
    shutil.copy(run_dir / "metrics.jsonl", into / "metrics.jsonl")
    return into


@pytest.fixture(scope="module")
def ds_configs(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("ds")
    paths = {}
    for stage, zero in ZERO.items():
        paths[stage] = root / f"zero{stage}_fp32.json"
        paths[stage].write_text(json.dumps({"zero_optimization": zero, "bf16": {"enabled": False}}))
    return paths


@pytest.fixture(scope="module")
def two_by_two(tiny_shards, ds_configs, tmp_path_factory) -> dict[int, Path]:
    """Uninterrupted 6-step runs on 2 ranks x 2 lanes, ZeRO-2 and ZeRO-3 (checkpoints at steps 3 and 6)."""
    runs = {}
    for stage, config in ds_configs.items():
        runs[stage] = tmp_path_factory.mktemp(f"zero{stage}") / "run"
        train(runs[stage], tiny_shards, 2, 2, config)
    return runs


def assert_same_losses(resumed: dict[int, float], reference: dict[int, float]) -> None:
    assert sorted(resumed) == sorted(reference) == list(range(1, 7))
    for step in range(4, 7):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=0), (step, resumed, reference)


def resume_on_one_rank(run: Path, shards: Path, config: Path, into: Path) -> str:
    run_dir = from_checkpoint(run, "step-00000003", into)
    out = train(run_dir, shards, 1, 4, config)
    assert not (run_dir / "checkpoints" / ".universal").exists()  # the conversion is dropped once saved again
    return out.stdout + out.stderr


def test_zero2_same_global_lanes_on_one_rank_is_exact(tiny_shards, ds_configs, two_by_two, tmp_path):
    text = resume_on_one_rank(two_by_two[2], tiny_shards, ds_configs[2], tmp_path / "run")
    assert (
        "elastic resume: 2 ranks x 2 lanes -> 1 rank x 4 lanes (4 -> 4 global lanes: exact); optimizer states "
        "re-partitioned through a universal checkpoint"
    ) in text
    assert_same_losses(losses(tmp_path / "run"), losses(two_by_two[2]))


def test_zero3_same_global_lanes_on_one_rank_is_exact(tiny_shards, ds_configs, two_by_two, tmp_path):
    """ZeRO-3 re-partitioned through DeepSpeed's universal checkpoint, with the load's two repairs
    (checkpoint._universal_load_repaired: per-group hyperparameters, one Adam step count per sub-group)."""
    text = resume_on_one_rank(two_by_two[3], tiny_shards, ds_configs[3], tmp_path / "run")
    assert "2 ranks x 2 lanes -> 1 rank x 4 lanes (4 -> 4 global lanes: exact)" in text
    assert_same_losses(losses(tmp_path / "run"), losses(two_by_two[3]))


def test_one_rank_to_two_is_exact(tiny_shards, ds_configs, tmp_path):
    reference = tmp_path / "one"
    train(reference, tiny_shards, 1, 4, ds_configs[2])
    run_dir = from_checkpoint(reference, "step-00000003", tmp_path / "two")
    out = train(run_dir, tiny_shards, 2, 2, ds_configs[2])
    assert "1 rank x 4 lanes -> 2 ranks x 2 lanes (4 -> 4 global lanes: exact)" in out.stdout + out.stderr
    assert_same_losses(losses(run_dir), losses(reference))


def test_fewer_global_lanes_park_documents_and_finish(tiny_shards, ds_configs, two_by_two, tmp_path):
    run_dir = from_checkpoint(two_by_two[2], "step-00000003", tmp_path / "run")
    out = train(run_dir, tiny_shards, 1, 2, ds_configs[2], "train.max_steps=12")
    text = out.stdout + out.stderr
    note = next(line for line in text.splitlines() if "elastic resume:" in line)
    assert "2 ranks x 2 lanes -> 1 rank x 2 lanes (4 -> 2 global lanes: " in note
    waiting = int(note.split("global lanes: ")[1].split(" documents in flight")[0])
    assert waiting >= 1  # at step 3 of these documents every lane is mid-document
    steps = [r for r in records(run_dir) if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13)) and "done: step 12" in text
    assert steps[-1]["restored_documents"] == waiting  # each waiting document continued with its parked memory
    state = json.loads((run_dir / "checkpoints" / "step-00000012" / "trainer_state.json").read_text())
    assert (state["world_size"], state["lanes"], state["restored_documents"]) == (1, 2, waiting)
