"""What a run carries from step to step, and through a checkpoint to the run that resumes it, on any shape.

Per rank (`rank-XXXXX.pt`): the loader's position (the global stream state, the same on every rank), the memory
of the rank's lanes (global lanes rank × lanes …), the RNG states; rank 0 also the memories parked for documents
that wait for a lane. Rank 0 (`trainer_state.json`): step, tokens, the wandb run id, the last evaluation, the
shape and the resolved config. The model, optimizer and scheduler are DeepSpeed's part (see `checkpoint.py`).

Elastic resume: a checkpoint written by W ranks × L lanes resumes on W' × L'. Each global lane g below both
counts keeps its document and its memory (read from the old rank g // L, row g % L); with fewer global lanes the
documents of the lanes beyond wait in the loader and their memories are *parked* here until a lane takes them
(the loader flags that batch `restore`); new lanes start fresh. Without dropout, every step of a resume with the
same global lane count computes what the uninterrupted run computes, up to float summation order (the loss is
normalised by the step's global token count, see `step.py`); with dropout the draws depend on the rank layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .checkpoint import Checkpointer, CheckpointError, Layout
from .config import PretrainConfig
from .distributed import Runtime, rng_state, set_rng_state


@dataclass
class TrainState:
    memory: torch.Tensor
    """The memory of this rank's lanes `[lanes, M, d]`, on its device in the model's dtype: where the next rollout
    starts."""
    step: int = 0
    """Optimizer steps done."""
    tokens: int = 0
    """Target tokens trained on so far, all ranks."""
    wandb_id: str | None = None
    """The wandb run id, kept so that a resumed run logs to the same wandb run."""
    last_eval: dict = field(default_factory=dict)
    """The latest evaluation's record (empty before the first)."""
    parked: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    """Memories `[M, d]` (CPU) of documents in flight that wait for a lane, by (document number, epoch); the same
    on every rank (each rank takes out the ones its lanes continue)."""
    restored: int = 0
    """Documents continued from a parked memory so far, all ranks."""
    tokens_by_source: dict[str, int] = field(default_factory=dict)
    """Target tokens trained on so far by corpus name, all ranks (what a mixture's weights share out)."""
    bad_documents: dict[str, str] = field(default_factory=dict)
    """Damaged documents skipped so far, all ranks: "source:document" → what was wrong (shard, key, error)."""
    loss_history: list[float] = field(default_factory=list)
    """The last rollouts' losses per target token (all ranks), the loss-spike check's reference."""

    def save(self, checkpointer: Checkpointer, engine, loader, config: PretrainConfig) -> str:
        """Checkpoint the engine, this state and `loader`'s position and the RNGs at `step`; `config` is recorded
        with it. Returns the tag. Collective: every rank calls it."""
        waiting = {(doc, epoch) for doc, _, epoch in loader.stream_state.parked}
        self.parked = {key: memory for key, memory in self.parked.items() if key in waiting}  # taken by any rank
        rank_state = {"loader": loader.state_dict(), "memory": self.memory.cpu(), "rng": rng_state()}
        if checkpointer.runtime.is_main:
            rank_state["parked"] = self.parked
        trainer_state = {
            "step": self.step,
            "tokens": self.tokens,
            "wandb_id": self.wandb_id,
            "last_eval": self.last_eval,
            "world_size": checkpointer.runtime.world_size,
            "lanes": loader.lanes,
            "restored_documents": self.restored,
            "tokens_by_source": self.tokens_by_source,
            "bad_documents": self.bad_documents,
            "loss_history": self.loss_history,
            "config": config.to_dict(),
        }
        return checkpointer.save(engine, self.step, rank_state, trainer_state, engine.module.config.to_json_string())

    def load(self, checkpointer: Checkpointer, layout: Layout, engine, loader) -> list[str]:
        """Restore the engine, this state, `loader`'s position and the RNGs from the checkpoint `layout` names, on
        this run's shape (module docstring). Returns the lines to log about a change of shape (none if the same).
        The memory keeps this state's device and dtype. CheckpointError when the checkpoint was written with
        another seed, corpus, split or segment length."""
        runtime = checkpointer.runtime
        trainer_state = checkpointer.load(engine, layout)
        old: dict[int, dict] = {}

        def saved(rank: int) -> dict:  # what rank `rank` of the checkpoint wrote, each file read once
            if rank not in old:
                old[rank] = checkpointer.rank_state(layout.tag, rank)
            return old[rank]

        def lane_memory(g: int) -> torch.Tensor:  # global lane g's memory as the checkpoint holds it
            return saved(g // layout.lanes)["memory"][g % layout.lanes]

        try:
            loader.load_state_dict(saved(0)["loader"])  # the same on every rank
        except ValueError as error:
            raise CheckpointError(f"cannot resume {checkpointer.root / layout.tag}: {error}") from None
        first = runtime.rank * loader.lanes
        for i, g in enumerate(range(first, min(first + loader.lanes, layout.global_lanes))):
            self.memory[i] = lane_memory(g).to(self.memory.device, self.memory.dtype)
        epoch = loader.stream_state.epoch  # checkpoints before mixtures keyed parked memories by document only
        self.parked = {
            key if isinstance(key, tuple) else (key, epoch): m for key, m in saved(0).get("parked", {}).items()
        }
        for g, doc, doc_epoch in loader.displaced:  # lanes taken away: their documents wait, memory parked
            self.parked[(doc, doc_epoch)] = lane_memory(g).clone()
        # a rank the checkpoint did not have continues rank 0's random streams
        set_rng_state(saved(runtime.rank if runtime.rank < layout.world_size else 0)["rng"])
        self.step, self.tokens = trainer_state["step"], trainer_state["tokens"]
        self.wandb_id, self.last_eval = trainer_state.get("wandb_id"), trainer_state.get("last_eval", {})
        self.restored = trainer_state.get("restored_documents", 0)
        self.tokens_by_source = dict(trainer_state.get("tokens_by_source", {}))
        self.bad_documents = dict(trainer_state.get("bad_documents", {}))
        self.loss_history = list(trainer_state.get("loss_history", []))
        return [] if loader.resumed_from is None else [elastic_note(layout, runtime, loader.lanes, len(self.parked))]


def elastic_note(layout: Layout, runtime: Runtime, lanes: int, waiting: int) -> str:
    """The log line of a resume on another shape: what changed and what that means for the data."""
    before, after = layout.global_lanes, runtime.world_size * lanes
    if after == before:
        what = "exact"
    elif after < before:
        what = f"{waiting} documents in flight wait for a lane, their memory parked"
    else:
        what = f"{after - before} new lanes take the next documents"
    ranks = lambda n: f"{n} rank{'s' if n != 1 else ''}"  # noqa: E731
    line = (
        f"elastic resume: {ranks(layout.world_size)} x {layout.lanes} lanes -> {ranks(runtime.world_size)} x "
        f"{lanes} lanes ({before} -> {after} global lanes: {what})"
    )
    return line + ("; optimizer states re-partitioned through a universal checkpoint" if layout.universal else "")


def attach_parked(batch: dict, parked: dict[tuple[int, int], torch.Tensor]) -> int:
    """For the lanes of a (CPU) batch that continue a waiting document, put its parked memory in
    `batch["restore_memory"]` `[lanes, M, d]` (taken out of `parked`); returns how many lanes do."""
    restore = batch["restore"].numpy()  # host arrays: nothing here waits for a device
    if not restore.any():
        return 0
    doc_index, epoch = batch["doc_index"].numpy(), batch["epoch"].numpy()
    rows = {int(lane): parked.pop((int(doc_index[lane]), int(epoch[lane]))) for lane in restore.nonzero()[0]}
    sample = next(iter(rows.values()))
    memory = torch.zeros((len(restore), *sample.shape), dtype=sample.dtype)
    for lane, row in rows.items():
        memory[lane] = row
    batch["restore_memory"] = memory
    return len(rows)
