"""Launching real multi-process runs from tests: torchrun, the deepspeed launcher, or srun-style (ranks in env).

Every launch gets its own free rendezvous port, so tests (and parallel test sessions) never collide.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(**extra: str) -> dict[str, str]:
    """The environment of a CPU DeepSpeed run: gloo via DS's CPU accelerator, one thread per rank, no wandb
    network, unbuffered output."""
    env = dict(os.environ)
    env.update(
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


def torchrun_cmd(script: str, args: list[str], nproc: int = 2) -> list[str]:
    return [str(BIN / "torchrun"), f"--nproc_per_node={nproc}", f"--master_port={free_port()}", script, *args]


def deepspeed_cmd(script: str, args: list[str], nproc: int = 2) -> list[str]:
    return [str(BIN / "deepspeed"), f"--num_gpus={nproc}", f"--master_port={free_port()}", script, *args]


def run(
    cmd: list[str], *, env: dict | None = None, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Run to completion; on failure the assertion message carries the output's tail."""
    proc = subprocess.run(cmd, cwd=REPO, env=env or cpu_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
            f"--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


class Ranks:
    """N processes of `python SCRIPT ARGS` with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* set, as `srun` would start
    them: each rank is its own process, so a test can signal or kill exactly one."""

    def __init__(
        self, script: str, args: list[str], nproc: int = 2, env: dict | None = None, log_dir: Path | None = None
    ):
        base = env or cpu_env()
        port = str(free_port())
        self.procs = []
        self.logs = []
        for rank in range(nproc):
            rank_env = dict(
                base,
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(nproc),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            )
            log = open((log_dir or Path("/tmp")) / f"rank{rank}-{port}.log", "w+")
            self.logs.append(log)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, script, *args],
                    cwd=REPO,
                    env=rank_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def signal(self, sig: int, group: bool = False) -> None:
        """`sig` to each rank still running; `group`: to every process of its group, as Slurm signals a step."""
        for proc in self.procs:
            if proc.poll() is None:
                (os.killpg if group else os.kill)(proc.pid, sig)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait()

    def wait(self, timeout: float = 600) -> list[int]:
        deadline = time.time() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"ranks did not finish in {timeout}s:\n{self.output()[-6000:]}")
        return [proc.returncode for proc in self.procs]

    def output(self) -> str:
        text = []
        for rank, log in enumerate(self.logs):
            log.seek(0)
            text.append(f"--- rank {rank}\n{log.read()}")
        return "\n".join(text)
