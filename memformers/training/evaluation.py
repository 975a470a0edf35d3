"""Validation: denoising loss with the memory carried across segments, and with it reset at every segment.

The difference (no-memory loss − memory loss) is the memory gain: what the memory contributes. Both are reported
overall and per segment position in the document (position 0 has nothing to remember, so its gain is ~0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .distributed import all_reduce
from .recurrence import segment_forward


@torch.no_grad()
def evaluate(model, batches: Iterable[dict], *, lanes: int, memory: torch.Tensor, positions: int, pad_id: int,
             decoder_start_id: int, max_batches: int | None = None) -> dict:
    """Run the val stream once, scoring each batch twice (memory carried / memory reset). Every rank must iterate
    the same number of batches (the loader guarantees it); sums are all-reduced, so every rank gets the result.

    Args:
        memory: an initial memory `[lanes, M, d]` (its content is ignored: the first segments reset it).
    """
    was_training = model.training
    model.eval()
    device = memory.device
    sums = torch.zeros(2, positions, dtype=torch.float64, device=device)  # [carried/reset, position]
    counts = torch.zeros(positions, dtype=torch.float64, device=device)
    carried = memory
    reset_all = torch.ones(lanes, dtype=torch.bool, device=device)
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        loss_mem, tokens, carried = segment_forward(model, batch, carried, pad_id=pad_id,
                                                    decoder_start_id=decoder_start_id)
        loss_reset, _, _ = segment_forward(model, batch, memory, pad_id=pad_id, decoder_start_id=decoder_start_id,
                                           resets=reset_all)
        valid = batch["valid"]
        position = batch["segment_index"].clamp(min=0, max=positions - 1)[valid]
        sums[0].index_add_(0, position, loss_mem[valid].double())
        sums[1].index_add_(0, position, loss_reset[valid].double())
        counts.index_add_(0, position, tokens[valid].double())
    all_reduce(sums)
    all_reduce(counts)
    if was_training:
        model.train()

    total = counts.sum().clamp(min=1)
    loss, loss_no_memory = (sums[0].sum() / total).item(), (sums[1].sum() / total).item()
    by_position = [[round(s / c, 6) if c > 0 else None for s, c in zip(row, counts.tolist())]
                   for row in sums.tolist()]  # None: no document of this split reached that position
    return {
        "eval_loss": loss,
        "eval_loss_no_memory": loss_no_memory,
        "memory_gain": loss_no_memory - loss,
        "eval_ppl": math.exp(min(loss, 50.0)),
        "eval_ppl_no_memory": math.exp(min(loss_no_memory, 50.0)),
        "eval_tokens": int(counts.sum().item()),
        "eval_loss_by_position": by_position[0],
        "eval_loss_no_memory_by_position": by_position[1],
    }
