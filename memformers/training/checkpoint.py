"""Checkpoints under RUN_DIR/checkpoints/, in DeepSpeed's layout plus this trainer's state.

    checkpoints/
      latest                  the newest complete tag (DeepSpeed's convention), replaced atomically
      step-00000100/          DeepSpeed's files for the tag (model, optimizer, scheduler, ZeRO partitions) and
        trainer_state.json    step, tokens, wandb run id, last eval, the resolved config (rank 0)
        model_config.json     the MemBartConfig (what export needs to rebuild the model)
        rank-00000.pt …       per rank: loader state (the global stream position, the same on every rank), the
                              memory of its lanes (global lanes rank × lanes …), RNG states; rank 0 also the
                              memories parked for documents waiting for a lane (after a resume on fewer lanes)
      .universal/step-…/      DeepSpeed's universal form of the tag being resumed on another world size

Atomicity: `latest` names a tag only after every rank has written all of it (a barrier, then rank 0 replaces the
file with `os.replace`). A crash mid-write leaves the previous `latest` — and that checkpoint — intact; the partial
tag directory is overwritten by the next save of the same step or deleted by pruning.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from memformers.files import atomic_write

from .distributed import Runtime, barrier

TAG_PREFIX = "step-"
LATEST = "latest"  # names the newest complete tag
TRAINER_STATE = "trainer_state.json"
UNIVERSAL = ".universal"  # a tag converted for a resume on another world size (kept until the next save)
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


@dataclass
class Layout:
    """How a checkpoint's run was spread: `world_size` ranks of `lanes` lanes each; `universal`: its optimizer
    states must be re-partitioned for this run (through DeepSpeed's universal checkpoint)."""

    tag: str
    world_size: int
    lanes: int
    universal: bool

    @property
    def global_lanes(self) -> int:
        return self.world_size * self.lanes


def to_universal(tag_dir: Path, out: Path) -> None:
    """DeepSpeed's own conversion (`ds_to_universal`) of a checkpoint tag of any ZeRO stage into a universal
    checkpoint in `out`, which any number of ranks can load; its chatter goes to `out/conversion.log`."""
    from deepspeed.checkpoint import ds_to_universal

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = SimpleNamespace(
        input_folder=str(tag_dir),
        output_folder=str(out),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    with open(out / "conversion.log", "w") as log, contextlib.redirect_stdout(log):
        ds_to_universal.main(args)


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
            shutil.rmtree(self.root / UNIVERSAL, ignore_errors=True)  # a resume's conversion, no longer needed
        barrier()
        return tag

    def resume_layout(self) -> Layout | None:
        """The layout of the checkpoint `latest` names, prepared for this run's world size (see `prepare`); None
        for a fresh run. Collective."""
        tag = self.latest_tag()
        if tag is None:
            return None
        layout = self.layout(tag)
        self.prepare(layout)
        return layout

    def layout(self, tag: str) -> Layout:
        """The shape the checkpoint `tag` was written with (from rank 0's loader state, so older checkpoints too)."""
        loader = self.rank_state(tag, 0)["loader"]
        layout = Layout(tag, int(loader["world_size"]), int(loader["lanes"]), universal=False)
        if layout.world_size != self.runtime.world_size and any((self.root / tag).glob("*_optim_states.pt")):
            layout.universal = True  # ZeRO partitions (or a partitioned mixed-precision optimizer) to re-spread
        return layout

    def prepare(self, layout: Layout) -> None:
        """Make `layout.tag` loadable on this run's world size: when its optimizer states are partitioned over
        another number of ranks, rank 0 converts it to DeepSpeed's universal checkpoint (once; kept until the
        next save) and the engine loads that. Collective: every rank calls it, before the engine is built with
        `load_universal=layout.universal`."""
        if layout.universal and self.runtime.is_main and not (self.root / UNIVERSAL / layout.tag / "zero").is_dir():
            to_universal(self.root / layout.tag, self.root / UNIVERSAL / layout.tag)
        barrier()

    def rank_state(self, tag: str, rank: int) -> dict:
        """What rank `rank` saved in `tag` (loader position, its lanes' memory, RNG states; rank 0: parked memory)."""
        path = self.root / tag / f"rank-{rank:05d}.pt"
        if not path.is_file():
            raise CheckpointError(
                f"{path} is missing: checkpoint {tag} is incomplete; restore the file, or point "
                f"{self.root / LATEST} at an older step-* directory"
            )
        return torch.load(path, map_location="cpu", weights_only=False)

    def load(self, engine, layout: Layout) -> dict:
        """Restore the engine (model, optimizer, scheduler; re-partitioned when the layout says so) from
        `layout.tag`; returns the trainer state (rank 0's trainer_state.json)."""
        root = self.root / UNIVERSAL if layout.universal else self.root
        with _universal_load_repaired(engine, layout.universal):
            load_path, _ = engine.load_checkpoint(
                str(root), tag=layout.tag, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load checkpoint {root / layout.tag}")
        return json.loads((self.root / layout.tag / TRAINER_STATE).read_text())

    def _prune(self, keep_tag: str) -> None:
        tags = sorted(p.name for p in self.root.glob(f"{TAG_PREFIX}*") if p.is_dir())
        for tag in tags[: max(0, len(tags) - self.keep)]:
            if tag != keep_tag:
                shutil.rmtree(self.root / tag, ignore_errors=True)


@contextlib.contextmanager
def _universal_load_repaired(engine, universal: bool):
    """Two repairs after DeepSpeed's ZeRO-3 universal load (0.19), which otherwise changes the training that follows:

    - it gives every optimizer parameter group the hyperparameters of the first (so the no-decay group would
      decay): each group's own are put back, all but the learning rate, which the checkpoint's schedule sets;
    - it gives every sub-group's Adam state one shared `step` tensor, which Adam increments in place once per
      sub-group, so from the first update on every sub-group but the first uses a later step's bias correction
      (measured: the no-decay group's first update off by 5e-5, losses 4e-4 apart three steps on): each state
      gets its own copy.
    """
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
    kept = [{k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
            for group in optimizer.param_groups] if universal else []  # fmt: skip
    yield
    for group, hyperparameters in zip(optimizer.param_groups, kept):
        group.update(hyperparameters)
    if universal:
        for state in optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()


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
