"""What a run carries from step to step, and through a checkpoint to the run that resumes it.

Per rank (`rank-XXXXX.pt`): the loader's position, every lane's memory, the RNG states. Rank 0
(`trainer_state.json`): step, tokens, the wandb run id, the last evaluation and the resolved config. The model,
optimizer and scheduler are DeepSpeed's part of the checkpoint (see `checkpoint.py` for the layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .checkpoint import Checkpointer
from .config import PretrainConfig
from .distributed import rng_state, set_rng_state


@dataclass
class TrainState:
    memory: torch.Tensor
    """Every lane's memory `[lanes, M, d]`, on this rank's device in the model's dtype: where the next rollout
    starts."""
    step: int = 0
    """Optimizer steps done."""
    tokens: int = 0
    """Target tokens trained on so far, all ranks."""
    wandb_id: str | None = None
    """The wandb run id, kept so that a resumed run logs to the same wandb run."""
    last_eval: dict = field(default_factory=dict)
    """The latest evaluation's record (empty before the first)."""

    def save(self, checkpointer: Checkpointer, engine, loader, config: PretrainConfig) -> str:
        """Checkpoint the engine, this state and `loader`'s position and the RNGs at `step`; `config` is recorded
        with it. Returns the tag. Collective: every rank calls it."""
        return checkpointer.save(
            engine,
            self.step,
            rank_state={"loader": loader.state_dict(), "memory": self.memory.cpu(), "rng": rng_state()},
            trainer_state={
                "step": self.step,
                "tokens": self.tokens,
                "wandb_id": self.wandb_id,
                "last_eval": self.last_eval,
                "config": config.to_dict(),
            },
            model_config_json=engine.module.config.to_json_string(),
        )

    def load(self, checkpointer: Checkpointer, tag: str, engine, loader) -> None:
        """Restore the engine, this state, `loader`'s position and the RNGs from checkpoint `tag`. The memory keeps
        this state's device and dtype."""
        rank_state, trainer_state = checkpointer.load(engine, tag)
        loader.load_state_dict(rank_state["loader"])
        self.memory = rank_state["memory"].to(self.memory.device, self.memory.dtype)
        set_rng_state(rank_state["rng"])
        self.step, self.tokens = trainer_state["step"], trainer_state["tokens"]
        self.wandb_id, self.last_eval = trainer_state.get("wandb_id"), trainer_state.get("last_eval", {})
