"""Checkpoints under RUN_DIR/checkpoints/, in DeepSpeed's layout plus this trainer's state.

    checkpoints/
      latest                  the newest complete tag (DeepSpeed's convention), replaced atomically
      step-00000100/          DeepSpeed's files for the tag (model, optimizer, scheduler, ZeRO partitions) and
        trainer_state.json    step, tokens, wandb run id, last eval, the resolved config (rank 0)
        model_config.json     the MemBartConfig (what export needs to rebuild the model)
        rank-00000.pt …       per rank: loader state (the global stream position, the same on every rank), the
                              memory of its lanes (global lanes rank × lanes …), RNG states; rank 0 also the
                              memories parked for documents waiting for a lane (after a resume on fewer lanes)
        contents.json         every file of the tag with its size and the rank that wrote it (rank 0, after
                              every rank has written): what a resume verifies
      .universal/step-…/      DeepSpeed's universal form of the tag being resumed on another world size
      damaged/step-…/         checkpoints a resume found damaged (a file missing or truncated), moved aside

Atomicity: `latest` names a tag only after every rank has written all of it (a barrier, then rank 0 replaces the
file with `os.replace`). A crash mid-write leaves the previous `latest` — and that checkpoint — intact; the partial
tag directory is overwritten by the next save of the same step or deleted by pruning.

Resume verifies the checkpoint `latest` names against its contents.json; a damaged one is logged (which file, what
is wrong), moved to damaged/, and the newest intact checkpoint is resumed instead (`latest` then names it). If none
is intact, CheckpointError lists what was found. Checkpoints written before contents.json existed are checked for
the trainer's own files only.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from memformers.files import atomic_write

from .distributed import Runtime, barrier, broadcast_object

TAG_PREFIX = "step-"
LATEST = "latest"  # names the newest complete tag
TRAINER_STATE = "trainer_state.json"
UNIVERSAL = ".universal"  # a tag converted for a resume on another world size (kept until the next save)
MODEL_CONFIG = "model_config.json"
CONTENTS = "contents.json"  # the files of a tag, their sizes and writers: what a resume verifies
DAMAGED = "damaged"  # where a resume moves the checkpoints it found damaged


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


def writer_rank(name: str) -> int | None:
    """The rank that wrote a checkpoint file, from its name (DeepSpeed's `…zero_pp_rank_R…`, the trainer's
    `rank-R.pt`); None for the files of rank 0 alone (model states, trainer_state.json, …)."""
    rank = re.search(r"(?:pp_rank_|^rank-)0*(\d+)", name)
    return int(rank[1]) if rank else None


def file_role(name: str) -> str:
    """What a checkpoint file holds, in words, from its name (DeepSpeed's naming and the trainer's)."""
    rank = writer_rank(name)
    who = f"rank {rank}'s " if rank is not None else ""
    if name.startswith("rank-"):
        return f"{who}trainer state (loader position, lane memory, RNG) {name}"
    if name.endswith("optim_states.pt"):
        return f"{who}optimizer states {name}"
    if name.endswith("model_states.pt"):
        return f"{who}model states {name}"
    return name


def contents_of(tag_dir: Path) -> dict:
    """contents.json's record of a tag: each file (recursively, relative), its size and the rank that wrote it."""
    files = {}
    for path in sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != CONTENTS):
        name = str(path.relative_to(tag_dir))
        files[name] = {"bytes": path.stat().st_size, "rank": writer_rank(path.name) or 0}
    return {"files": files}


def damage(tag_dir: Path) -> list[str]:
    """What is wrong with a checkpoint tag, one phrase per problem (empty: intact): files of its contents.json
    missing or of another size, an unreadable trainer_state.json; without contents.json (older checkpoints), the
    trainer's own files."""
    if not tag_dir.is_dir():
        return [f"{tag_dir} does not exist"]
    problems = []
    try:
        listed = json.loads((tag_dir / CONTENTS).read_text())["files"]
    except FileNotFoundError:
        listed = None
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{CONTENTS} is unreadable"]
    if listed is None:  # written before contents.json: the trainer's own files must be there
        problems += [f"{name} is missing" for name in (TRAINER_STATE, MODEL_CONFIG, "rank-00000.pt")
                     if not (tag_dir / name).is_file()]  # fmt: skip
        listed = {}
    for name, entry in listed.items():
        path = tag_dir / name
        if not path.is_file():
            problems.append(f"{file_role(path.name)} is missing")
        elif path.stat().st_size != entry["bytes"]:
            problems.append(f"{file_role(path.name)} has {path.stat().st_size} bytes, {entry['bytes']} were written")
    if not problems:
        try:
            json.loads((tag_dir / TRAINER_STATE).read_text())
        except (OSError, ValueError):
            problems.append(f"{TRAINER_STATE} is unreadable")
    return problems


@dataclass
class Layout:
    """How a checkpoint's run was spread: `world_size` ranks of `lanes` lanes each; `universal`: its optimizer
    states must be re-partitioned for this run (through DeepSpeed's universal checkpoint)."""

    tag: str
    world_size: int
    lanes: int
    universal: bool
    notes: list[str] = field(default_factory=list)
    """What the resume found on the way (damaged checkpoints skipped), to log."""

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

    def intact_tag(self) -> tuple[str | None, list[str]]:
        """The checkpoint to resume (None: a fresh run) and what was found on the way to it: the tag `latest`
        names if it is intact, else the newest intact one, the damaged ones (newer than it) moved to damaged/ and
        `latest` pointed at it. CheckpointError (listing what was found) when checkpoints exist and none is intact.
        Rank 0 decides, every rank gets the answer. Collective."""
        found: tuple[str | None, list[str]] | CheckpointError = (None, [])
        if self.runtime.is_main:
            try:
                found = self._find_intact()
            except CheckpointError as error:
                found = error
        found = broadcast_object(found)
        if isinstance(found, CheckpointError):
            raise found
        return found

    def _find_intact(self) -> tuple[str | None, list[str]]:
        latest = self.root / LATEST
        if not latest.is_file():
            return None, []
        named = latest.read_text().strip()
        candidates = [named] + [tag for tag in reversed(checkpoint_tags(self.root)) if tag < named]
        notes, problems = [], {}
        for tag in candidates:
            problems[tag] = damage(self.root / tag)
            if not problems[tag]:
                break
        else:
            raise CheckpointError(
                f"no intact checkpoint in {self.root}: "
                + "; ".join(f"{tag}: {', '.join(found)}" for tag, found in problems.items())
                + ". Restore the files named, or start a new run_dir"
            )
        for bad in [t for t in problems if problems[t]]:
            notes.append(f"checkpoint {bad} is damaged: {'; '.join(problems[bad])}")
            if (self.root / bad).is_dir():
                aside = self._set_aside(bad)
                notes[-1] += f" (moved to {aside})"
        if tag != named:
            atomic_write(latest, tag)
            notes.append(f"resuming from {tag}, the newest intact checkpoint")
        return tag, notes

    def _set_aside(self, tag: str) -> Path:
        """Move a damaged tag to damaged/ (under a new name if one is there already); returns where it went."""
        (self.root / DAMAGED).mkdir(exist_ok=True)
        aside, n = self.root / DAMAGED / tag, 1
        while aside.exists():
            n += 1
            aside = self.root / DAMAGED / f"{tag}.{n}"
        shutil.move(str(self.root / tag), str(aside))
        return aside

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
            atomic_write(tag_dir / CONTENTS, json.dumps(contents_of(tag_dir), indent=1))
            atomic_write(self.root / LATEST, tag)
            self._prune(keep_tag=tag)
            shutil.rmtree(self.root / UNIVERSAL, ignore_errors=True)  # a resume's conversion, no longer needed
        barrier()
        return tag

    def resume_layout(self) -> Layout | None:
        """The layout of the checkpoint to resume (the one `latest` names, or the newest intact one: see
        `intact_tag`), prepared for this run's world size (see `prepare`); None for a fresh run. Collective."""
        tag, notes = self.intact_tag()
        if tag is None:
            return None
        layout = self.layout(tag)
        layout.notes = notes
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
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise CheckpointError(f"{path} cannot be read ({error}): {self._damaged_advice(tag)}") from None

    def load(self, engine, layout: Layout) -> dict:
        """Restore the engine (model, optimizer, scheduler; re-partitioned when the layout says so) from
        `layout.tag`; returns the trainer state (rank 0's trainer_state.json)."""
        root = self.root / UNIVERSAL if layout.universal else self.root
        try:
            with _universal_load_repaired(engine, layout.universal):
                load_path, _ = engine.load_checkpoint(
                    str(root), tag=layout.tag, load_optimizer_states=True, load_lr_scheduler_states=True
                )
        except (OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as error:
            raise CheckpointError(f"DeepSpeed cannot load {root / layout.tag} ({error}): "
                                  + self._damaged_advice(layout.tag)) from None  # fmt: skip
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load checkpoint {root / layout.tag}")
        return json.loads((self.root / layout.tag / TRAINER_STATE).read_text())

    def _damaged_advice(self, tag: str) -> str:
        """What to do about a checkpoint whose files have their sizes but not their content."""
        return (
            f"the files of {tag} have the sizes they were written with, so their content is damaged. Move "
            f"{self.root / tag} to {self.root / DAMAGED}/ to resume from the checkpoint before it"
        )

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
