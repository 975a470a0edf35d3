"""The Slurm scripts on a real Slurm cluster: slurmctld + two slurmd "nodes" on this machine (tests/slurm_cluster.py).

* a 2-node `sbatch --wait slurm/pretrain.sh pretrain/configs/tiny.yaml ...` on CPU trains, checkpoints, finishes;
* preemption: SIGUSR1 to the batch script mid-run (what `--signal=B:USR1@T` does before the time limit) makes the
  trainer checkpoint and the script requeue the job, whose next attempt resumes from that checkpoint and finishes
  with every step logged exactly once;
* slurm/prepare_data.sh: an array job shards slices of the input, one dependent job merges them into the same
  SHARD_DIR as the single-process script.

Skipped, with the reason, only where Slurm cannot run: not root, or `apt-get install slurm-wlm munge` impossible.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch import REPO, cpu_env
from slurm_cluster import SlurmCluster

PY = sys.executable
TINY = "pretrain/configs/tiny.yaml"
TRAIN_ARGS = ["eval.max_batches=2", "logging.wandb=disabled", "logging.progress_bar=false"]

# each test runs sbatch jobs on the local cluster (started once per session, slurm-wlm installed first if needed)
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="session")
def cluster():
    cluster = SlurmCluster.start_or_skip(nodes=2)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slurm-corpus") / "docs.jsonl"
    _run([PY, "data_prep/make_synthetic.py", "--output", str(out), "--num-docs", "48", "--no-progress"])
    return out


@pytest.fixture(scope="session")
def shards(tmp_path_factory, corpus: Path) -> Path:
    """A tiny SHARD_DIR made by the real data scripts (tokenizer trained on the corpus)."""
    root = tmp_path_factory.mktemp("slurm-data")
    _run(
        [
            PY,
            "data_prep/train_tokenizer.py",
            "--input",
            str(corpus),
            "--vocab-size",
            "600",
            "--output",
            str(root / "tok"),
            "--no-progress",
        ]
    )
    _run(
        [
            PY,
            "data_prep/shard_documents.py",
            "--input",
            str(corpus),
            "--tokenizer",
            str(root / "tok"),
            "--output",
            str(root / "shards"),
            "--segment-length",
            "48",
            "--val-fraction",
            "0.1",
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    return root / "shards"


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def job_env(cluster: SlurmCluster, **extra: str) -> dict[str, str]:
    """What a user's shell would hold for a CPU run: DeepSpeed's CPU accelerator, one rank per node."""
    return cluster.env(cpu_env(NPROC_PER_NODE="1", PYTHON=PY, **extra))


def train_steps(run_dir: Path) -> list[int]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["step"] for r in records if "loss" in r]


def node_logs(run_dir: Path, job_id: int, attempt: int) -> dict[str, str]:
    return {
        p.name: p.read_text(errors="replace")
        for p in sorted((run_dir / "logs").glob(f"job{job_id}.attempt{attempt}.node*.log"))
    }


def context(cluster: SlurmCluster, run_dir: Path, job_out: Path) -> str:
    """Everything useful when an assertion fails: the job's output, the node logs, the daemons' logs."""
    parts = [
        f"--- {job_out.name}\n{job_out.read_text(errors='replace')[-4000:]}" if job_out.is_file() else "(no job output)"
    ]
    for log in sorted((run_dir / "logs").glob("*.log")) if (run_dir / "logs").is_dir() else []:
        parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
    parts.append(cluster.diagnostics(1500))
    return "\n".join(parts)


@pytest.mark.distributed
def test_pretrain_two_nodes_trains_and_checkpoints(cluster: SlurmCluster, shards: Path, tmp_path: Path):
    run_dir, job_out = tmp_path / "run", tmp_path / "slurm-%j.out"
    cmd = [
        "sbatch",
        "--wait",
        "--parsable",
        "-N",
        "2",
        "--partition",
        cluster.partition,
        "--gpus-per-node=0",
        "--time=02:00:00",
        "-J",
        "test-2node",
        "-o",
        str(job_out),
        "slurm/pretrain.sh",
        TINY,
        f"run_dir={run_dir}",
        f"data.path={shards}",
        "train.max_steps=6",
        "checkpoint.every_steps=2",
        *TRAIN_ARGS,
    ]
    proc = cluster.run(cmd, env=job_env(cluster), timeout=300, check=False)
    job_id = int(proc.stdout.strip().split(";")[0]) if proc.stdout.strip() else -1
    job_out = tmp_path / f"slurm-{job_id}.out"
    where = context(cluster, run_dir, job_out)
    assert proc.returncode == 0, f"sbatch --wait exited {proc.returncode}: {proc.stderr}\n{where}"

    job = cluster.job(job_id)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", (job, where)
    assert job["NumNodes"] == "2" and job["Restarts"] == "0", (job, where)
    assert train_steps(run_dir) == [1, 2, 3, 4, 5, 6], where
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000006", where

    logs = node_logs(run_dir, job_id, 0)
    assert sorted(logs) == [f"job{job_id}.attempt0.node0.log", f"job{job_id}.attempt0.node1.log"], where
    text = "\n".join(logs.values())
    assert "starting at step 0: 2 ranks" in text, where  # world size = 2 nodes x 1 rank
    assert "done: step 6" in text, where
    assert all("torchrun exited with 0" in log for log in logs.values()), where
    main_log = job_out.read_text()
    assert "2 node(s) x 1 rank(s) = world size 2" in main_log and "done" in main_log, where


@pytest.mark.distributed
def test_preemption_checkpoints_requeues_and_resumes(cluster: SlurmCluster, shards: Path, tmp_path: Path):
    """SIGUSR1 to the batch shell (as --signal=B:USR1@T sends it) mid-run: checkpoint, requeue, resume, finish.

    Submitted from another directory with no run_dir given: the run directory is runs/<job name> there, the same in
    both attempts."""
    max_steps = 16
    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    run_dir = submit_dir / "runs" / "test-preempt"
    cmd = [
        "sbatch",
        "--parsable",
        "-N",
        "2",
        "--partition",
        cluster.partition,
        "--gpus-per-node=0",
        "--time=02:00:00",
        "-J",
        "test-preempt",
        "-o",
        str(submit_dir / "slurm-%j.out"),
        str(REPO / "slurm" / "pretrain.sh"),
        str(REPO / TINY),
        f"deepspeed={REPO / 'ds_configs' / 'zero2.json'}",
        f"data.path={shards}",
        f"train.max_steps={max_steps}",
        "checkpoint.every_steps=100",
        *TRAIN_ARGS,
    ]
    proc = cluster.run(cmd, env=job_env(cluster), cwd=submit_dir)
    job_id = int(proc.stdout.strip().split(";")[0])
    job_out = submit_dir / f"slurm-{job_id}.out"
    try:
        # wait until the trainer has logged a couple of steps, then preempt
        deadline = time.time() + 180
        while time.time() < deadline:
            metrics = run_dir / "metrics.jsonl"
            if metrics.is_file() and len(train_steps(run_dir)) >= 2:
                break
            assert cluster.job(job_id).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), context(
                cluster, run_dir, job_out
            )
            time.sleep(0.3)
        else:
            raise AssertionError(f"no training steps within 180 s\n{context(cluster, run_dir, job_out)}")
        cluster.run(["scancel", "--signal=USR1", "--batch", str(job_id)])

        job = cluster.wait_job(
            job_id,
            lambda j: (
                j.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
            ),
            timeout=300,
        )
    finally:
        cluster.run(["scancel", str(job_id)], check=False)
    where = context(cluster, run_dir, job_out)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", (job, where)
    assert job["Restarts"] == "1", (job, where)  # requeued exactly once

    first, second = "\n".join(node_logs(run_dir, job_id, 0).values()), "\n".join(node_logs(run_dir, job_id, 1).values())
    assert len(node_logs(run_dir, job_id, 0)) == 2 and len(node_logs(run_dir, job_id, 1)) == 2, where
    stopped = re.search(r"stop signal: checkpointed step (\d+), exiting with 75", first)
    assert stopped, where
    step = int(stopped.group(1))
    assert 2 <= step < max_steps, where
    assert f"resumed from step-{step:08d} at step {step}" in second, where
    assert f"done: step {max_steps}" in second, where
    assert train_steps(run_dir) == list(range(1, max_steps + 1)), where  # every step exactly once
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{max_steps:08d}", where

    main_log = job_out.read_text()
    assert "SIGUSR1" in main_log and f"requeueing job {job_id}" in main_log, where
    assert "attempt 1 on" in main_log and main_log.rstrip().endswith("done"), where


@pytest.mark.distributed
def test_preempted_on_two_nodes_resubmitted_on_one_resumes_and_finishes(
    cluster: SlurmCluster, shards: Path, tmp_path: Path
):
    """A 2-node job (1 rank x 4 lanes each) preempted and not requeued (--no-requeue), then resubmitted on 1 node
    with 8 lanes and the same run_dir: an elastic resume (8 global lanes either way: exact) that finishes."""
    max_steps, run_dir = 10, tmp_path / "run"

    def submit(nodes: int, *extra: str, wait: bool) -> subprocess.CompletedProcess:
        cmd = ["sbatch", "--parsable", *(["--wait"] if wait else []), "--no-requeue", "-N", str(nodes),
               "--partition", cluster.partition, "--gpus-per-node=0", "--time=02:00:00", "-J", "test-elastic",
               "-o", str(tmp_path / "slurm-%j.out"), "slurm/pretrain.sh", TINY, f"run_dir={run_dir}",
               f"data.path={shards}", f"train.max_steps={max_steps}", "checkpoint.every_steps=100", *TRAIN_ARGS,
               *extra]  # fmt: skip
        return cluster.run(cmd, env=job_env(cluster), timeout=400, check=False)

    first = int(submit(2, wait=False).stdout.strip().split(";")[0])
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(train_steps(run_dir) if (run_dir / "metrics.jsonl").is_file() else []) < 2:
            time.sleep(0.3)
        cluster.run(["scancel", "--signal=USR1", "--batch", str(first)])
        job = cluster.wait_job(
            first, lambda j: j.get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING"), timeout=300
        )
    finally:
        cluster.run(["scancel", str(first)], check=False)
    where = context(cluster, run_dir, tmp_path / f"slurm-{first}.out")
    assert job["Restarts"] == "0" and job["ExitCode"].startswith("75"), (job, where)  # stopped, not requeued
    stopped = re.search(r"stop signal: checkpointed step (\d+)", "\n".join(node_logs(run_dir, first, 0).values()))
    assert stopped and 2 <= int(stopped.group(1)) < max_steps, where

    proc = submit(1, "data.lanes=8", wait=True)
    second = int(proc.stdout.strip().split(";")[0])
    where = context(cluster, run_dir, tmp_path / f"slurm-{second}.out")
    assert proc.returncode == 0 and cluster.job(second)["NumNodes"] == "1", where
    text = "\n".join(node_logs(run_dir, second, 0).values())
    assert f"resumed from step-{int(stopped.group(1)):08d}" in text, where
    assert "elastic resume: 2 ranks x 4 lanes -> 1 rank x 8 lanes (8 -> 8 global lanes: exact)" in text, where
    assert f"done: step {max_steps}" in text and train_steps(run_dir) == list(range(1, max_steps + 1)), where


def rank_pid(run_dir: Path, rank: int) -> int:
    """The process of trainer rank `rank` of the run in `run_dir` (the cluster's nodes are this machine)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"run_dir={run_dir}".encode() in cmdline and any(a.endswith(b"pretrain/train.py") for a in cmdline):
            if f"RANK={rank}".encode() in environ:
                return int(proc.name)
    raise AssertionError(f"no process of rank {rank} of {run_dir}")


@pytest.mark.distributed
def test_a_stalled_rank_ends_the_job_within_the_collective_timeout(cluster: SlurmCluster, shards: Path, tmp_path):
    """Rank 1 (the second node) SIGSTOPped mid-run: rank 0's collective times out, it names rank 1 and exits 4,
    and the job ends with a failure a minute later instead of at its time limit (2 h)."""
    run_dir, timeout = tmp_path / "run", 15
    cmd = ["sbatch", "--parsable", "--no-requeue", "-N", "2", "--partition", cluster.partition, "--gpus-per-node=0",
           "--time=02:00:00", "-J", "test-stall", "-o", str(tmp_path / "slurm-%j.out"), "slurm/pretrain.sh", TINY,
           f"run_dir={run_dir}", f"data.path={shards}", "train.max_steps=100000", "checkpoint.every_steps=100000",
           f"train.collective_timeout_s={timeout}", *TRAIN_ARGS]  # fmt: skip
    job_id = int(cluster.run(cmd, env=job_env(cluster, NODE_EXIT_GRACE="10"), timeout=60).stdout.split(";")[0])
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not ((run_dir / "metrics.jsonl").is_file() and train_steps(run_dir)):
            time.sleep(0.3)
        stalled = rank_pid(run_dir, 1)
        os.kill(stalled, signal.SIGSTOP)
        stopped_at = time.time()
        job = cluster.wait_job(
            job_id, lambda j: j.get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"), timeout=240
        )
        ended_after = time.time() - stopped_at
    finally:
        cluster.run(["scancel", str(job_id)], check=False)
    where = context(cluster, run_dir, tmp_path / f"slurm-{job_id}.out")
    assert job["JobState"] == "FAILED" and not job["ExitCode"].startswith("0"), (job, where)
    assert ended_after < timeout + 90, (ended_after, where)  # collective timeout + health barrier + srun's grace
    text = "\n".join(node_logs(run_dir, job_id, 0).values())
    assert "a collective timed out on rank 0" in text and "rank(s) 1 did not answer" in text, where


# --- slurm/prepare_data.sh ------------------------------------------------------------------------------------------

# A stand-in for data_prep/shard_documents.py with the slice interface prepare_data.sh drives (--num-slices N
# --slice-index I | --merge): records what each task was asked, merges by checking every slice is there.
STUB_SHARDER = r"""
import argparse, json, os, sys
from pathlib import Path
if "--help" in sys.argv:
    print("usage: stub --input ... --output DIR [--workers N] --num-slices N (--slice-index I | --merge)")
    sys.exit(0)
p = argparse.ArgumentParser()
p.add_argument("--input", nargs="+", required=True)
p.add_argument("--output", required=True)
p.add_argument("--workers", type=int)
p.add_argument("--num-slices", type=int, required=True)
p.add_argument("--slice-index", type=int)
p.add_argument("--merge", action="store_true")
p.add_argument("--no-progress", action="store_true")
a, rest = p.parse_known_args()
parts = Path(a.output) / ".slices"
parts.mkdir(parents=True, exist_ok=True)
if a.merge:
    missing = [i for i in range(a.num_slices) if not (parts / f"{i}.json").is_file()]
    if missing:
        sys.exit(f"missing slices {missing}")
    slices = [json.loads((parts / f"{i}.json").read_text()) for i in range(a.num_slices)]
    merged = {"slices": slices, "merge_job": os.environ["SLURM_JOB_ID"]}
    (Path(a.output) / "manifest.json").write_text(json.dumps(merged))
    sys.exit(0)
if str(a.slice_index) == os.environ.get("STUB_FAIL_SLICE"):
    sys.exit(f"slice {a.slice_index}: failing on purpose")
(parts / f"{a.slice_index}.json").write_text(json.dumps({
    "index": a.slice_index, "of": a.num_slices, "workers": a.workers, "inputs": a.input, "rest": rest,
    "array_job": os.environ.get("SLURM_ARRAY_JOB_ID"), "task": os.environ.get("SLURM_ARRAY_TASK_ID")}))
"""


def prepare_data(
    cluster: SlurmCluster, cwd: Path, slices: int, shard_args: list[str], env: dict, timeout: float = 240
) -> subprocess.CompletedProcess:
    cmd = [
        str(REPO / "slurm" / "prepare_data.sh"),
        "--slices",
        str(slices),
        "--wait",
        "--partition",
        cluster.partition,
        "--cpus-per-task=1",
        "--time=01:00:00",
        "--",
        *shard_args,
    ]
    return cluster.run(cmd, env=env, cwd=cwd, timeout=timeout, check=False)


def test_prepare_data_array_then_merge(cluster: SlurmCluster, tmp_path: Path):
    """The Slurm side of prepare_data.sh: N array tasks each get their slice index, the merge runs after all of
    them, --wait returns the merge's status; a failed slice cancels the merge and fails the command."""
    stub = tmp_path / "stub_sharder.py"
    stub.write_text(STUB_SHARDER)
    env = cpu_env(PYTHON=PY, SHARD_DOCUMENTS=str(stub))
    args = ["--input", "corpus/a.jsonl", "corpus/b.jsonl", "--output", "shards", "--segment-length", "48"]
    proc = prepare_data(cluster, tmp_path, 3, args, env)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{cluster.diagnostics(1500)}"
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    slices = manifest["slices"]
    assert [s["index"] for s in slices] == [0, 1, 2] and all(s["of"] == 3 for s in slices)
    assert [s["task"] for s in slices] == ["0", "1", "2"] and len({s["array_job"] for s in slices}) == 1
    assert all(s["workers"] == 1 for s in slices)  # --workers from the task's --cpus-per-task
    assert all(
        s["inputs"] == ["corpus/a.jsonl", "corpus/b.jsonl"] and s["rest"] == ["--segment-length", "48"] for s in slices
    )
    merge = cluster.job(int(manifest["merge_job"]))
    assert merge["JobState"] == "COMPLETED" and merge["Dependency"] == "(null)", merge
    logs = sorted(p.name for p in tmp_path.glob("slurm-*.out"))
    assert len(logs) == 4 and sum("-merge-" in name for name in logs) == 1, logs

    failing = tmp_path / "failing"
    failing.mkdir()
    proc = prepare_data(cluster, failing, 2, args, dict(env, STUB_FAIL_SLICE="1"))
    assert proc.returncode == 1, f"{proc.stdout}\n{proc.stderr}"
    assert "slice task(s) 1 of array job" in proc.stdout and "CANCELLED" in proc.stdout, proc.stdout
    assert not (failing / "shards" / "manifest.json").exists()


def _digests(shard_dir: Path) -> dict[str, str]:
    """sha256 of every file under a SHARD_DIR (shards, index.npy, manifest.json, tokenizer copy)."""
    return {
        p.relative_to(shard_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(shard_dir.rglob("*"))
        if p.is_file()
    }


def test_prepare_data_matches_single_process(cluster: SlurmCluster, corpus: Path, tmp_path: Path):
    """The real data scripts: 2 slices + merge give the SHARD_DIR one shard_documents.py run gives, byte for byte."""
    tok = tmp_path / "tok"
    _run(
        [
            PY,
            "data_prep/train_tokenizer.py",
            "--input",
            str(corpus),
            "--vocab-size",
            "600",
            "--output",
            str(tok),
            "--no-progress",
        ]
    )
    common = [
        "--input",
        str(corpus),
        "--tokenizer",
        str(tok),
        "--segment-length",
        "48",
        "--val-fraction",
        "0.1",
        "--docs-per-shard",
        "8",
    ]
    _run(
        [
            PY,
            "data_prep/shard_documents.py",
            *common,
            "--output",
            str(tmp_path / "single"),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    proc = prepare_data(cluster, tmp_path, 2, [*common, "--output", str(tmp_path / "sliced")], cpu_env(PYTHON=PY))
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("slurm-*.out")))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{logs}"
    _run([PY, "data_prep/inspect_shards.py", "--no-progress", "--segments", "0", str(tmp_path / "sliced")])
    assert "slice 0 of 2" in logs and "slice 1 of 2" in logs and "merged from 2 slices" in logs, logs

    single = json.loads((tmp_path / "single" / "manifest.json").read_text())
    sliced = json.loads((tmp_path / "sliced" / "manifest.json").read_text())
    for split, entry in single["splits"].items():
        for key in ("documents", "segments", "tokens"):
            assert sliced["splits"][split][key] == entry[key], (split, key, logs)
        assert len(sliced["splits"][split]["shards"]) == len(entry["shards"]), (split, logs)
    assert sliced["stats"] == single["stats"], logs
    assert _digests(tmp_path / "sliced") == _digests(tmp_path / "single"), logs  # the same files, byte for byte
    assert not (tmp_path / "sliced" / ".slices").exists(), logs  # the merge removed the slices' bookkeeping
