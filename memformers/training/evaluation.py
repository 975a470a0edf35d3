"""Validation: denoising loss with the memory carried across segments, and with it reset at every segment.

The difference (no-memory loss − memory loss) is the memory gain: what the memory contributes. Both are reported
overall and per segment position in the document (position 0 has nothing to remember, so its gain is ~0), and
per source of a mixture (the overall figures pool the tokens of every source's val split).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch

from .batches import to_device
from .config import EvalSection
from .corpus import Corpus
from .distributed import all_gather_objects, all_reduce
from .engine import initial_memory
from .recurrence import segment_forward


@torch.no_grad()
def evaluation_sums(
    model, batches: Iterable[dict], eval_cfg: EvalSection, *, memory: torch.Tensor, pad_id: int, decoder_start_id: int
) -> torch.Tensor:
    """Run a val stream once (at most `eval.max_batches` batches), scoring each batch twice (memory carried /
    memory reset), summed by segment position up to `eval.positions`. Every rank must iterate the same number of
    batches (the loader guarantees it); the sums are all-reduced, so every rank gets them.

    Args:
        model: a DeepSpeed engine or the plain model (anything `segment_forward` can call).
        memory: an initial memory `[lanes, M, d]` (its content is ignored: the first segments reset it).
    Returns:
        float64 `[3, positions]` on the memory's device: summed token loss with memory, without, target tokens.
    """
    lanes, positions, max_batches = memory.shape[0], eval_cfg.positions, eval_cfg.max_batches
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, positions, dtype=torch.float64, device=memory.device)  # [carried/reset/tokens, position]
    carried = memory
    reset_all = torch.ones(lanes, dtype=torch.bool, device=memory.device)
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        loss_mem, tokens, carried = segment_forward(
            model, batch, carried, pad_id=pad_id, decoder_start_id=decoder_start_id
        )
        loss_reset, _, _ = segment_forward(
            model, batch, memory, pad_id=pad_id, decoder_start_id=decoder_start_id, resets=reset_all
        )
        valid = batch["valid"]
        position = batch["segment_index"].clamp(min=0, max=positions - 1)[valid]
        for row, values in enumerate((loss_mem, loss_reset, tokens)):
            sums[row].index_add_(0, position, values[valid].double())
    if was_training:
        model.train()
    return all_reduce(sums)


def summarise(sums: torch.Tensor) -> dict:
    """The figures of `evaluation_sums` (or of several added up): losses per target token, the memory gain,
    perplexities, and both losses by segment position (None where no document reached that position)."""
    counts = sums[2]
    total = counts.sum().clamp(min=1)
    loss, loss_no_memory = (sums[0].sum() / total).item(), (sums[1].sum() / total).item()
    by_position = [
        [round(s / c, 6) if c > 0 else None for s, c in zip(row, counts.tolist())] for row in sums[:2].tolist()
    ]
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


def evaluate(
    model, batches: Iterable[dict], eval_cfg: EvalSection, *, memory: torch.Tensor, pad_id: int, decoder_start_id: int
) -> dict:
    """`summarise(evaluation_sums(...))`: one val stream's figures."""
    return summarise(
        evaluation_sums(model, batches, eval_cfg, memory=memory, pad_id=pad_id, decoder_start_id=decoder_start_id)
    )


def pooled(by_source: dict[str, torch.Tensor]) -> dict:
    """The overall figures of several sources' sums (their tokens pooled), with `eval_loss_by_source`,
    `eval_loss_no_memory_by_source` and `memory_gain_by_source` (name → figure) beside them."""
    figures = {name: summarise(sums) for name, sums in by_source.items()}
    record = summarise(sum(by_source.values()))
    for key in ("eval_loss", "eval_loss_no_memory", "memory_gain"):
        record[f"{key}_by_source"] = {name: f[key] for name, f in figures.items()}
    return record


def noting_damaged(batches: Iterable[dict], damaged: list[dict]) -> Iterator[dict]:
    """`batches`, with the damaged documents their loader skipped added to `damaged`."""
    for batch in batches:
        damaged.extend(batch["bad_documents"])
        yield batch


class Evaluator:
    """The run's evaluations: a fresh pass over each source's val split (sources without one are left out; none
    at all if no source has one), logged to metrics.jsonl with its step and summarised in one line."""

    def __init__(self, engine, corpus: Corpus, eval_cfg: EvalSection):
        self.engine, self.corpus, self.cfg = engine, corpus, eval_cfg
        self.enabled = corpus.has_val

    def due(self, step: int) -> bool:
        """Whether `eval.every_steps` asks for an evaluation after `step`."""
        return self.enabled and bool(self.cfg.every_steps) and step % self.cfg.every_steps == 0

    def run(self, step: int, logger) -> dict:
        """Evaluate the model as it is after `step`; returns the record logged. Collective."""
        device, config = self.corpus.runtime.device, self.engine.module.config
        by_source, damaged = {}, []  # damaged: the val documents the loaders skipped (their lanes are padding)
        for source in self.corpus.val_sources():
            by_source[self.corpus.names[source]] = evaluation_sums(
                self.engine,
                (to_device(b, device) for b in noting_damaged(self.corpus.val_stream(source), damaged)),
                self.cfg,
                memory=initial_memory(self.engine, self.corpus.data.lanes, device),
                pad_id=config.pad_token_id,
                decoder_start_id=config.decoder_start_token_id,
            )
        record = {"step": step, **pooled(by_source)}
        if all_reduce(torch.tensor([float(len(damaged))], device=device)).item() > 0:
            found = {bad["description"] for on_rank in all_gather_objects(damaged) for bad in on_rank}
            record["eval_skipped_documents"] = len(found)
            for description in sorted(found):
                logger.write(f"step {step}: evaluation skipped a damaged val document: {description}")
        logger.log(record)
        logger.write(
            f"step {step}: eval loss {record['eval_loss']:.4f}, without memory "
            f"{record['eval_loss_no_memory']:.4f}, memory gain {record['memory_gain']:+.4f}"
            + (
                " (" + ", ".join(f"{n} {g:+.4f}" for n, g in record["memory_gain_by_source"].items()) + ")"
                if len(by_source) > 1
                else ""
            )
        )
        return record
