"""Checkpoints under RUN_DIR/checkpoints/, in DeepSpeed's layout plus this trainer's state.

    checkpoints/
      latest                  the newest complete tag (DeepSpeed's convention), replaced atomically
      step-00000100/          DeepSpeed's files for the tag (model, optimizer, scheduler, ZeRO partitions) and
        trainer_state.json    step, tokens, wandb run id, last eval, the resolved config (rank 0)
        model_config.json     the MemBartConfig (what export needs to rebuild the model)
        rank-00000.pt …       per rank: loader state, every lane's memory, RNG states

Atomicity: `latest` names a tag only after every rank has written all of it (a barrier, then rank 0 replaces the
file with `os.replace`). A crash mid-write leaves the previous `latest` — and that checkpoint — intact; the partial
tag directory is overwritten by the next save of the same step or deleted by pruning.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from memformers.files import atomic_write

from .distributed import Runtime, barrier

TAG_PREFIX = "step-"
LATEST = "latest"  # names the newest complete tag
TRAINER_STATE = "trainer_state.json"
MODEL_CONFIG = "model_config.json"


def tag_for_step(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not fit this run, phrased as what to do."""


def checkpoint_tags(root: str | Path) -> list[str]:
    """The step-* tags under a checkpoints folder, oldest first (complete or not)."""
    root = Path(root)
    return sorted(p.name for p in root.glob(f"{TAG_PREFIX}*") if p.is_dir()) if root.is_dir() else []


def resolve_tag(root: str | Path, tag: str | None = None) -> str:
    """`tag`, or the tag `root/latest` names, checked to exist with the trainer's files; CheckpointError if not."""
    root = Path(root)
    available = checkpoint_tags(root)
    if not available:
        raise CheckpointError(
            f"{root.parent} has no checkpoints ({root}/{TAG_PREFIX}* is missing): pass the run_dir "
            "of a pretrain/train.py run that has written at least one checkpoint"
        )
    if tag is None:
        latest = root / LATEST
        if not latest.is_file():
            raise CheckpointError(
                f"{latest} is missing, so there is no default tag: pass a tag, one of {', '.join(available)}"
            )
        tag = latest.read_text().strip()
    if tag not in available:
        raise CheckpointError(f"unknown tag {tag!r} in {root}: available tags are {', '.join(available)}")
    for name in (MODEL_CONFIG, TRAINER_STATE):
        if not (root / tag / name).is_file():
            raise CheckpointError(
                f"{root / tag / name} is missing: {tag} is not a complete trainer checkpoint "
                f"(available tags: {', '.join(available)})"
            )
    return tag


class Checkpointer:
    def __init__(self, root: str | Path, keep: int, runtime: Runtime):
        self.root = Path(root)
        self.keep = keep
        self.runtime = runtime

    def latest_tag(self) -> str | None:
        latest = self.root / LATEST
        if not latest.is_file():
            return None
        tag = latest.read_text().strip()
        if not (self.root / tag).is_dir():
            raise RuntimeError(
                f"{latest} names {tag!r}, but {self.root / tag} does not exist: restore it or "
                f"point {latest} at an existing step-* directory"
            )
        return tag

    def save(self, engine, step: int, rank_state: dict, trainer_state: dict, model_config_json: str) -> str:
        """Write a checkpoint on every rank, then publish it as `latest`. Collective: every rank calls it."""
        tag = tag_for_step(step)
        engine.save_checkpoint(str(self.root), tag=tag, save_latest=False)
        tag_dir = self.root / tag
        buffer = _serialize(rank_state)
        atomic_write(tag_dir / f"rank-{self.runtime.rank:05d}.pt", buffer)
        if self.runtime.is_main:
            atomic_write(tag_dir / TRAINER_STATE, json.dumps(trainer_state, indent=2))
            atomic_write(tag_dir / MODEL_CONFIG, model_config_json)
        _fault_point("after_rank_state", step)
        barrier()  # every rank has written everything of `tag`
        if self.runtime.is_main:
            atomic_write(self.root / LATEST, tag)
            self._prune(keep_tag=tag)
        barrier()
        return tag

    def load(self, engine, tag: str) -> tuple[dict, dict]:
        """Restore engine (model, optimizer, scheduler) and return (this rank's state, trainer state)."""
        tag_dir = self.root / tag
        rank_file = tag_dir / f"rank-{self.runtime.rank:05d}.pt"
        if not rank_file.is_file():
            saved = sorted(p.name for p in tag_dir.glob("rank-*.pt"))
            raise RuntimeError(
                f"{rank_file} is missing: checkpoint {tag} was written by {len(saved)} ranks and this run has "
                f"{self.runtime.world_size}. Lane memories are per rank: resume with the same world size."
            )
        load_path, _ = engine.load_checkpoint(
            str(self.root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {tag_dir}")
        rank_state = torch.load(rank_file, map_location="cpu", weights_only=False)
        trainer_state = json.loads((tag_dir / TRAINER_STATE).read_text())
        return rank_state, trainer_state

    def _prune(self, keep_tag: str) -> None:
        tags = sorted(p.name for p in self.root.glob(f"{TAG_PREFIX}*") if p.is_dir())
        for tag in tags[: max(0, len(tags) - self.keep)]:
            if tag != keep_tag:
                shutil.rmtree(self.root / tag, ignore_errors=True)


def _serialize(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _fault_point(name: str, step: int) -> None:
    """Fault injection for the crash-consistency test: MEMFORMERS_FAULT=<name>:<rank>:<step> makes that rank die
    here (SIGKILL's exit status, no cleanup) while saving that step, as a node lost mid-checkpoint would."""
    fault = os.environ.get("MEMFORMERS_FAULT", "")
    if fault == f"{name}:{os.environ.get('RANK', '0')}:{step}":
        os._exit(137)
