"""Process group, device and RNG handling: the one place that knows about accelerators and backends.

Ranks come from the environment, whichever launcher set it: `deepspeed`/`torchrun` (RANK, WORLD_SIZE, LOCAL_RANK)
or `srun` alone (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID). The accelerator is DeepSpeed's: CUDA with nccl on GPU
machines, the CPU with gloo under `DS_ACCELERATOR=cpu`.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

# How long a collective may wait for the other ranks (train.collective_timeout_s when it is not set): on GPUs what
# torch uses for NCCL; on the CPU less, as there is nothing as slow as a GPU compile or a large checkpoint there.
DEFAULT_COLLECTIVE_TIMEOUT_S_CPU = 600.0
DEFAULT_COLLECTIVE_TIMEOUT_S = {"cuda": 1800.0, "cpu": DEFAULT_COLLECTIVE_TIMEOUT_S_CPU}


@dataclass(frozen=True)
class Runtime:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S_CPU
    """How long a collective waits for the other ranks before it fails."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    @property
    def pin_memory(self) -> bool:
        """Whether the loader pins its batches' host memory: on a GPU, a copy from pinned memory is asynchronous
        (`non_blocking=True` queues it), from pageable memory the host waits for it."""
        return self.device.type == "cuda"

    @property
    def loader_producer(self) -> str:
        """Where the training stream makes its batches under `data.producer: auto`: a process on a GPU, where the
        loop that launches kernels needs the GIL the loader's Python would hold (NOTES.md: a thread's work on a
        batch stalled a launch-bound loop for about as long); a thread on the CPU, with nothing to launch."""
        return "process" if self.device.type == "cuda" else "thread"


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


_HEALTH_GROUP = None  # gloo, beside NCCL too: monitored_barrier names the ranks that stopped answering


def init_runtime(collective_timeout_s: float | None = None) -> Runtime:
    """Join the process group (a group of one for plain `python`) and pick this rank's device. Every collective
    of the group (DeepSpeed's too) gives up after `collective_timeout_s` (None: DEFAULT_COLLECTIVE_TIMEOUT_S):
    on gloo it raises (see `peer_failure`), on NCCL torch's watchdog ends the process."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    world_size = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)
    kind = "cpu" if accelerator.device_name() == "cpu" else "cuda"
    timeout_s = collective_timeout_s or DEFAULT_COLLECTIVE_TIMEOUT_S[kind]
    timeout = timedelta(seconds=timeout_s)
    # DeepSpeed makes its data-parallel groups with `new_group(ranks)`, which takes torch's default timeout (gloo 30
    # min, NCCL 10 min), not the world group's: make the default ours, so that every group's collectives are bound
    dist.distributed_c10d.default_pg_timeout = timeout
    dist.distributed_c10d.default_pg_nccl_timeout = timeout
    if not dist.is_initialized():
        deepspeed.init_distributed(
            dist_backend=accelerator.communication_backend_name(), auto_mpi_discovery=False, timeout=timeout
        )
        global _HEALTH_GROUP
        health_timeout = timedelta(seconds=_health_wait_s(timeout_s))
        _HEALTH_GROUP = dist.new_group(backend="gloo", timeout=health_timeout) if world_size > 1 else None
    return Runtime(rank, local_rank, world_size, torch.device(accelerator.device_name(local_rank)), timeout_s)


def _health_wait_s(timeout_s: float) -> float:
    """How long the health barrier waits for the ranks: a tenth of the collective timeout, within 5 to 30 s."""
    return min(30.0, max(5.0, 0.1 * timeout_s))


class PeerFailure(RuntimeError):
    """A collective failed because other ranks stopped answering (stalled, or died); the message says which
    ranks where that is known."""


def peer_failure(error: BaseException, timeout_s: float) -> PeerFailure | None:
    """After `error` was raised on this rank, whether other ranks have stopped answering: a barrier that names the
    ranks that do not reach it within a few seconds (rank 0 learns which; the others, that some did not). Returns
    the PeerFailure to report, or None when every rank answers (`error` is then not a peer's failure)."""
    if _HEALTH_GROUP is None:
        return None
    try:
        wait = timedelta(seconds=_health_wait_s(timeout_s))
        dist.monitored_barrier(group=_HEALTH_GROUP, timeout=wait, wait_all_ranks=True)
        return None
    except RuntimeError as barrier_error:
        listed = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(barrier_error))
        if listed:
            who = f"rank(s) {listed[1].strip()} did not answer (stalled or dead)"
        elif "from rank 0" in str(barrier_error):  # what the other ranks see when rank 0 is gone
            who = "rank 0 did not answer (stalled or dead)"
        elif dist.get_rank() == 0:
            who = "a rank's connection closed (it died)"
        else:
            who = "some ranks did not answer (rank 0's log names them)"
        kind = "timed out" if "timed out" in str(error).lower() else "failed"
        return PeerFailure(
            f"a collective {kind} on rank {dist.get_rank()} (train.collective_timeout_s={timeout_s:g}): {who}. "
            "Check those ranks' logs and nodes; the run resumes from its latest checkpoint when restarted"
        )


def local_device() -> torch.device:
    """The device of a one-process job (evaluation, export) without DeepSpeed: the first GPU if there is one and
    `DS_ACCELERATOR` does not ask for the CPU, else the CPU."""
    if os.environ.get("DS_ACCELERATOR") != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce across ranks (a no-op without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order ([obj] without a process group). Collective."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (picklable; a no-op without a process group)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seed_everything(seed: int) -> None:
    """Same seed on every rank: the model must initialise identically everywhere (DeepSpeed broadcasts anyway)."""
    from deepspeed.accelerator import get_accelerator

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    get_accelerator().manual_seed_all(seed)


def rng_state() -> dict:
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "accelerator": accelerator.get_rng_state() if accelerator.device_name() != "cpu" else None,
    }


def set_rng_state(state: dict) -> None:
    from deepspeed.accelerator import get_accelerator

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["accelerator"] is not None:
        get_accelerator().set_rng_state(state["accelerator"])


def adam_implementation(on_cpu: bool, offloaded: bool) -> dict:
    """DeepSpeed optimizer params that pick AdamW's implementation for the device.

    CPU: torch's AdamW. GPU: torch's fused AdamW (one kernel per parameter group, like DeepSpeed's FusedAdam, but
    shipped compiled with torch: DeepSpeed's is built on first use, which needs nvcc and ninja on the compute node
    and a minute). An optimizer offloaded to the CPU (ZeRO offload): DeepSpeed's own CPU Adam."""
    if on_cpu:
        return {"torch_adam": True}
    if offloaded:
        return {}
    return {"torch_adam": True, "fused": True}


def profiler_activities(device: torch.device) -> list:
    """What a torch profiler trace records on `device`: the host's ops, and the GPU's kernels on a GPU."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


# Dense bf16 peak per device, for the MFU estimate (from the vendors' data sheets, dense, no sparsity). The first
# key found in the device's name counts: the PCIe and NVL cards, with lower clocks and power, before the SXM ones.
PEAK_TFLOPS = {
    "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200 NVL": 835.0, "H100": 989.0, "H200": 989.0, "B200": 2250.0,
    "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0, "V100": 125.0,
}  # fmt: skip


def peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of `device` (None for the CPU and for a GPU not in PEAK_TFLOPS: no MFU then)."""
    return peak_tflops_of(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def peak_tflops_of(device_name: str) -> float | None:
    """The dense bf16 peak of the GPU called `device_name` (as CUDA names it, e.g. "NVIDIA H100 80GB HBM3")."""
    return next((tf for key, tf in PEAK_TFLOPS.items() if key in device_name), None)
