"""Memory recurrence: a rollout of T consecutive segments per lane, with gradients through the memory.

    memory_0 (detached) ─► seg 1 ─► memory_1 ─► seg 2 ─► … ─► seg T ─► memory_T (detached, handed on)
                            │loss_1               │loss_2          │loss_T
    rollout loss = Σ_t w_t · loss_t         (w: uniform 1/T, or the reference's 2^t / Σ 2^t)

Plain truncated BPTT keeps every segment's activations until the one backward. With `replay=True` each segment runs
under non-reentrant activation checkpointing: only the memories between segments (and each segment's inputs) stay
alive, and each segment is recomputed during the single backward — Memformer's memory replay back-propagation, with
one `engine.backward` per rollout so ZeRO's gradient hooks fire once per parameter, as ZeRO 0–3 require. The last
segment is not checkpointed: the backward starts with it, so its activations would be rebuilt at once, and keeping
them costs no more than the one recomputed segment the backward holds later (T-1 extra forwards, not T).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.models.bart.modeling_bart import shift_tokens_right


def loss_weights(time_horizon: int, weighting: str) -> list[float]:
    """Weights of the T segment losses of a rollout; they sum to 1."""
    if weighting == "uniform":
        return [1.0 / time_horizon] * time_horizon
    if weighting == "exponential":
        raw = [2.0**t for t in range(1, time_horizon + 1)]
        return [w / sum(raw) for w in raw]
    raise ValueError(f"unknown loss weighting {weighting!r} (uniform or exponential)")


def decoder_inputs(labels: torch.Tensor, pad_id: int, decoder_start_id: int) -> torch.Tensor:
    """BART's teacher forcing: the target shifted right behind `decoder_start_id`, -100 read as padding."""
    return shift_tokens_right(labels, pad_id, decoder_start_id)


def segment_forward(
    model, batch: dict, memory: torch.Tensor, *, pad_id: int, decoder_start_id: int, resets: torch.Tensor | None = None
):
    """One segment for every lane.

    Args:
        batch: `source_ids` `[lanes, S']`, `source_mask`, `labels` `[lanes, S]` (-100: no loss), `resets` `[lanes]`.
        memory: `[lanes, M, d]`.
        resets: overrides `batch["resets"]` (evaluation without memory resets every lane).
        A batch with `restore_memory` `[lanes, M, d]` starts the lanes flagged in `restore` from those rows (documents
        that waited for a lane continue with their parked memory).
    Returns:
        per-lane summed token loss `[lanes]` (fp32), per-lane target token counts `[lanes]`, new memory.
    """
    labels = batch["labels"]
    if "restore_memory" in batch:
        memory = torch.where(batch["restore"][:, None, None], batch["restore_memory"].to(memory.dtype), memory)
    out = model(
        input_ids=batch["source_ids"],
        attention_mask=batch["source_mask"],
        memory_states=memory,
        memory_resets=batch["resets"] if resets is None else resets,
        decoder_input_ids=decoder_inputs(labels, pad_id, decoder_start_id),
        use_cache=False,  # teacher forcing: a decoder cache would only be filled and dropped (and guard compiles)
    )
    logits = out.logits.float()  # [lanes, S, V]; (N, V) rows are the contiguous, fast layout for cross-entropy
    token_loss = F.cross_entropy(
        logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100, reduction="none"
    ).view(labels.shape)  # [lanes, S]
    return token_loss.sum(dim=1), (labels != -100).sum(dim=1), out.memory_states


@dataclass
class RolloutResult:
    loss: torch.Tensor
    """Weighted rollout loss (differentiable)."""
    memory: torch.Tensor
    """Memory after the last segment, detached: the next rollout's start."""
    loss_sum: torch.Tensor
    """Unweighted summed token loss over the rollout (for logging), a detached scalar on the device."""
    tokens: torch.Tensor
    """Target tokens in the rollout (valid lanes only), a long scalar on the device."""


def run_rollout(
    model,
    segments: list[dict],
    memory: torch.Tensor,
    weights: list[float],
    *,
    replay: bool,
    pad_id: int,
    decoder_start_id: int,
    target_tokens: torch.Tensor | None = None,
    loss_scale: float = 1.0,
) -> RolloutResult:
    """Forward T segments carrying `memory`; returns the weighted loss to back-propagate once.

    Segment t's summed token loss is divided by `target_tokens[t]` (default: this process's target tokens of that
    segment) and multiplied by `loss_scale`. Data-parallel training passes the counts over all ranks and the world
    size (DeepSpeed averages the ranks' gradients): every token then weighs the same however lanes are spread.
    Nothing here reads a value back to the host: on a GPU the rollout is queued without waiting for it.
    """
    memory = memory.detach()
    loss = torch.zeros((), device=memory.device)
    loss_sum, tokens = torch.zeros((), device=memory.device), torch.zeros((), dtype=torch.long, device=memory.device)
    last = len(segments) - 1
    for t, (weight, batch) in enumerate(zip(weights, segments)):
        if replay and t < last:
            lane_loss, lane_tokens, memory = checkpoint(
                segment_forward,
                model,
                batch,
                memory,
                use_reentrant=False,
                pad_id=pad_id,
                decoder_start_id=decoder_start_id,
            )
        else:
            lane_loss, lane_tokens, memory = segment_forward(
                model, batch, memory, pad_id=pad_id, decoder_start_id=decoder_start_id
            )
        count = lane_tokens.sum()
        denominator = count if target_tokens is None else target_tokens[t]
        # a segment with no targets (every lane padding, at an epoch's end) adds nothing
        loss = loss + weight * lane_loss.sum() * loss_scale / denominator.clamp(min=1)
        loss_sum = loss_sum + lane_loss.sum().detach()
        tokens = tokens + count
    return RolloutResult(loss, memory.detach(), loss_sum, tokens)
