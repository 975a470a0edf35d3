"""The pretraining engine end to end: real DeepSpeed (CPU, gloo), 2 processes, the tiny model, real shards.

Launchers covered: torchrun, the deepspeed launcher, and srun-style processes with ranks in the environment.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_run_args
from launch import Ranks, cpu_env, deepspeed_cmd, run, torchrun_cmd

TRAIN = "pretrain/train.py"
STEP_KEYS = {"step", "loss", "lr", "tokens", "tokens_per_s", "grad_norm", "mfu"}

# each test starts pretrain/train.py or a DeepSpeed script (15-40 s on 2 cores); all but the config-error test
# start 2 ranks
pytestmark = pytest.mark.slow


def metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return [x for x in lines if "loss" in x], [x for x in lines if "eval_loss" in x]


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(x["step"], x["loss"]) for x in metrics(run_dir)[0]]


def wait_for_step(run_dir: Path, step: int, ranks: Ranks, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").is_file() and any(s >= step for s, _ in losses(run_dir)):
            return
        if any(p.poll() is not None for p in ranks.procs):
            raise AssertionError(f"a rank exited early:\n{ranks.output()[-6000:]}")
        time.sleep(0.2)
    ranks.kill()
    raise AssertionError(f"step {step} not reached in {timeout}s:\n{ranks.output()[-6000:]}")


@pytest.mark.distributed
def test_zero2_torchrun_trains_evaluates_and_checkpoints(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    run(
        torchrun_cmd(
            TRAIN,
            tiny_run_args(
                run_dir,
                tiny_shards,
                "train.max_steps=6",
                "checkpoint.every_steps=3",
                "eval.every_steps=3",
                "checkpoint.keep=1",
            ),
        )
    )
    steps, evals = metrics(run_dir)
    assert [x["step"] for x in steps] == list(range(1, 7))
    for record in steps:
        assert STEP_KEYS <= record.keys(), record
        assert record["loss"] > 0 and record["tokens_per_s"] > 0 and record["grad_norm"] > 0
    assert all(b["tokens"] > a["tokens"] for a, b in zip(steps, steps[1:]))
    assert steps[0]["lr"] < steps[2]["lr"]  # warmup
    assert [e["step"] for e in evals] == [3, 6]
    for e in evals:
        assert {"eval_loss", "eval_loss_no_memory", "memory_gain", "eval_loss_by_position"} <= e.keys()
        assert e["memory_gain"] == pytest.approx(e["eval_loss_no_memory"] - e["eval_loss"])
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text() == "step-00000006"
    assert sorted(p.name for p in ckpt.glob("step-*")) == ["step-00000006"]  # keep=1 pruned step 3
    tag = ckpt / "step-00000006"
    assert {p.name for p in tag.glob("rank-*.pt")} == {"rank-00000.pt", "rank-00001.pt"}
    state = json.loads((tag / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["tokens"] == steps[-1]["tokens"] and state["last_eval"]["step"] == 6
    assert json.loads((tag / "model_config.json").read_text())["model_type"] == "membart"
    assert (run_dir / "config.yaml").is_file()


@pytest.mark.distributed
def test_zero3_deepspeed_launcher_with_memory_replay(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    run(
        deepspeed_cmd(
            TRAIN,
            tiny_run_args(
                run_dir,
                tiny_shards,
                "deepspeed=ds_configs/zero3.json",
                "train.memory_replay=true",
                "train.max_steps=4",
                "train.rollouts_per_step=2",
                "checkpoint.every_steps=4",
            ),
        )
    )
    steps, evals = metrics(run_dir)
    assert [x["step"] for x in steps] == [1, 2, 3, 4]
    assert all(x["grad_norm"] > 0 for x in steps) and len(evals) == 1
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-00000004"


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [2, 3])
def test_replay_and_bptt_give_the_same_gradients_under_zero(stage):
    out = run(torchrun_cmd("tests/scripts/replay_grads.py", [str(stage)]))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["nonzero"] == result["params"] > 100
    assert result["max_rel_diff"] < 1e-5


@pytest.fixture(scope="module")
def uninterrupted(tiny_shards, tmp_path_factory) -> list[tuple[int, float]]:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    ranks = Ranks(TRAIN, tiny_run_args(run_dir, tiny_shards, *RESUME_ARGS))
    assert ranks.wait() == [0, 0], ranks.output()[-4000:]
    return losses(run_dir)


RESUME_ARGS = ("train.max_steps=10", "checkpoint.every_steps=3", "eval.every_steps=0")


@pytest.mark.distributed
def test_exact_resume_after_kill_9(tiny_shards, tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    ranks = Ranks(TRAIN, tiny_run_args(run_dir, tiny_shards, *RESUME_ARGS))
    wait_for_step(run_dir, 7, ranks)  # past the step-6 checkpoint, mid-way to step 9's
    ranks.kill()
    assert (run_dir / "checkpoints" / "latest").read_text() in ("step-00000006", "step-00000009")
    resumed = Ranks(TRAIN, tiny_run_args(run_dir, tiny_shards, *RESUME_ARGS))
    assert resumed.wait() == [0, 0], resumed.output()[-4000:]
    assert "resumed from step-" in resumed.output()
    assert losses(run_dir) == uninterrupted  # identical, step for step


@pytest.mark.distributed
def test_a_killed_checkpoint_writer_leaves_the_previous_checkpoint_loadable(tiny_shards, tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    ranks = Ranks(
        TRAIN, tiny_run_args(run_dir, tiny_shards, *RESUME_ARGS), env=cpu_env(MEMFORMERS_FAULT="after_rank_state:1:6")
    )
    deadline = time.time() + 300
    while ranks.procs[1].poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ranks.procs[1].returncode == 137, ranks.output()[-4000:]
    ranks.kill()  # rank 0 waits forever at the barrier for its dead peer, as on a real cluster
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text() == "step-00000003"
    assert (ckpt / "step-00000006").is_dir()  # the partial write is there, but not published
    resumed = Ranks(TRAIN, tiny_run_args(run_dir, tiny_shards, *RESUME_ARGS))
    assert resumed.wait() == [0, 0], resumed.output()[-4000:]
    assert "resumed from step-00000003" in resumed.output()
    assert losses(run_dir) == uninterrupted


@pytest.mark.distributed
def test_sigusr1_checkpoints_and_exits_75_then_resumes(tiny_shards, tmp_path, uninterrupted):
    """With the loader's producer in a process (what a GPU run has), signalled as Slurm signals a step: every
    process of each rank's group, the producer too. Its batches are the thread's: the losses are the same."""
    run_dir, args = tmp_path / "run", (*RESUME_ARGS, "data.producer=process")
    ranks = Ranks(TRAIN, tiny_run_args(run_dir, tiny_shards, *args))
    wait_for_step(run_dir, 2, ranks)
    ranks.signal(signal.SIGUSR1, group=True)
    assert ranks.wait() == [75, 75], ranks.output()[-4000:]
    stopped_at = losses(run_dir)[-1][0]
    assert 2 <= stopped_at < 10
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step-{stopped_at:08d}"
    resumed = Ranks(TRAIN, tiny_run_args(run_dir, tiny_shards, *args))
    assert resumed.wait() == [0, 0], resumed.output()[-4000:]
    assert losses(run_dir) == uninterrupted


@pytest.mark.distributed
def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    proc = run(
        torchrun_cmd(
            TRAIN,
            tiny_run_args(
                run_dir,
                tiny_shards,
                "train.lr=1e30",
                "train.warmup_steps=0",
                "train.max_steps=20",
                "train.max_nonfinite_steps=2",
                "train.grad_clip=0",
            ),
        ),
        check=False,
    )
    assert proc.returncode != 0
    steps, _ = metrics(run_dir)
    assert steps[-1]["skipped_steps"] == 2 and steps[-1]["grad_norm"] is None and steps[-1]["loss"] is None
    assert len(steps) < 20
    assert "2 consecutive skipped steps" in proc.stdout + proc.stderr and "non-finite loss or gradient" in proc.stdout


def test_config_errors_exit_2_with_the_key_named(tiny_shards, tmp_path):
    proc = run([sys.executable, TRAIN, *tiny_run_args(tmp_path / "r", tiny_shards, "train.max_step=3")], check=False)
    assert proc.returncode == 2
    assert "unknown config key 'train.max_step'" in proc.stderr and "max_steps" in proc.stderr


@pytest.mark.distributed
def test_wandb_offline_run_id_survives_resume(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    common = ("checkpoint.every_steps=2", "eval.every_steps=0", "logging.wandb=offline")
    run(torchrun_cmd(TRAIN, tiny_run_args(run_dir, tiny_shards, "train.max_steps=2", *common)))
    state = json.loads((run_dir / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    run_id = state["wandb_id"]
    assert run_id
    run(torchrun_cmd(TRAIN, tiny_run_args(run_dir, tiny_shards, "train.max_steps=4", *common)))
    state = json.loads((run_dir / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert state["wandb_id"] == run_id
    offline_runs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(name.endswith(run_id) for name in offline_runs)


@pytest.mark.distributed
def test_a_short_run_on_the_synthetic_corpus_learns_to_use_its_memory(tiny_shards, tmp_path):
    """With the memory carried, the val loss ends lower than with it reset at every segment, by far more than the
    gain of a model that has not learned to use it (|gain| ~ 1e-4 at the start); and the gain sits where memory can
    help: not at a document's first segment, which has nothing to remember."""
    run_dir = tmp_path / "run"
    run(
        torchrun_cmd(
            TRAIN,
            tiny_run_args(
                run_dir,
                tiny_shards,
                "data.lanes=4",
                "train.time_horizon=8",
                "train.lr=2e-3",
                "train.warmup_steps=20",
                f"train.max_steps={GAIN_STEPS}",
                "eval.every_steps=0",
                "eval.max_batches=null",
                f"checkpoint.every_steps={GAIN_STEPS}",
            ),
        )
    )
    final = metrics(run_dir)[1][-1]
    assert final["memory_gain"] > GAIN_THRESHOLD, final
    first = final["eval_loss_no_memory_by_position"][0] - final["eval_loss_by_position"][0]
    later = [
        b - a
        for a, b in zip(final["eval_loss_by_position"][1:], final["eval_loss_no_memory_by_position"][1:])
        if a is not None
    ]
    assert first == 0.0 and max(later) > GAIN_THRESHOLD, final  # at position 0 both paths start from a reset


# 150 steps reach a gain of ~0.01 nats/token (deterministic on CPU); an untrained model's |gain| is ~1e-4
GAIN_STEPS, GAIN_THRESHOLD = 150, 0.005
