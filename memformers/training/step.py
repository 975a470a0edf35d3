"""One optimizer step: `train.rollouts_per_step` rollouts of `train.time_horizon` segments, every lane's memory
carried from rollout to rollout and step to step, then the step's record for metrics.jsonl."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

from .batches import SegmentFeed
from .config import TrainSection
from .distributed import Runtime, all_gather_objects, all_reduce, peak_tflops
from .engine import flops_per_token
from .recurrence import loss_weights, run_rollout
from .signals import StopRequest
from .state import TrainState


@dataclass(frozen=True)
class StepSpec:
    """What every step of the run does the same way."""

    rollouts: int
    time_horizon: int
    weights: list[float]
    """The T segment losses' weights in a rollout's loss."""
    replay: bool
    pad_id: int
    decoder_start_id: int
    device: torch.device
    world_size: int
    flops_per_token: float
    """Training FLOPs per target token (for the MFU estimate)."""
    peak_tflops: float | None
    """Per-device peak; None: MFU is not logged."""
    sources: tuple[str, ...] = ("data",)
    """The names of the corpora trained on (batches' `source` indexes them), for `tokens_by_source`."""

    @classmethod
    def of(
        cls, train: TrainSection, engine, runtime: Runtime, peak: float | None = None, sources: tuple[str, ...] = ()
    ) -> StepSpec:
        """The steps of `train` on `engine`; `peak` (logging.peak_tflops) overrides the accelerator's data sheet;
        `sources` names the corpora."""
        config = engine.module.config
        return cls(
            rollouts=train.rollouts_per_step,
            time_horizon=train.time_horizon,
            weights=loss_weights(train.time_horizon, train.loss_weighting),
            replay=train.memory_replay,
            pad_id=config.pad_token_id,
            decoder_start_id=config.decoder_start_token_id,
            device=runtime.device,
            world_size=runtime.world_size,
            flops_per_token=flops_per_token(config),
            peak_tflops=peak or peak_tflops(runtime.device),
            sources=tuple(sources) or ("data",),
        )


def train_step(
    engine,
    feed: SegmentFeed,
    state: TrainState,
    spec: StepSpec,
    *,
    stop: StopRequest | None = None,
    spikes: LossSpikes | None = None,
) -> dict | None:
    """Run one optimizer step, advancing `state` (step, tokens, memory). Returns the step's record, or None when
    the data ran out (train.epochs reached) before the step was complete; then step and tokens are unchanged.

    The record: step, loss (per target token, all ranks), lr (the one this step applied), tokens (so far, all
    ranks), tokens_per_s, grad_norm (None exactly when the update was skipped: a non-finite loss or gradient), mfu
    (None without a peak), step_time_s, data_wait_share (the share of the step's time spent blocked on the loader),
    loader_cpu_share (the CPU time the loader's producer spent on the step's batches / the step's time),
    skipped_steps (so far), restored_documents (documents continued from a parked memory so far, after an elastic
    resume on fewer lanes), tokens_by_source (so far, all ranks, by corpus name), skipped_documents (damaged
    documents skipped so far, all ranks; `state.bad_documents` says which), loss_spike (the update was skipped as a
    loss spike, see `LossSpikes`), and stop_agreed: whether `stop` was requested on any rank by the end of the
    step (all ranks then stop after the same step).

    The step reads values back from the device once, at its end (on a GPU, the one host synchronisation of the
    step, besides DeepSpeed's own in `engine.step()`; the loss-spike check adds one per rollout): every sum of the
    record rides one all-reduce and one copy. Collective: every rank calls it.
    """
    started, loader_mark, lr = time.perf_counter(), feed.mark(), engine.get_lr()[0]  # the lr this step applies
    # summed over ranks on the device: loss, target tokens, restored and damaged documents, stops, tokens by source
    sums = torch.zeros(_BY_SOURCE + len(spec.sources), dtype=torch.float64, device=spec.device)
    damaged: list[dict] = []  # damaged documents this rank's lanes met (the loader skipped them)
    spiked = False
    for _ in range(spec.rollouts):
        segments = feed.take(spec.time_horizon)
        if segments is None:
            return None
        damaged += [bad for batch in segments for bad in batch["bad_documents"]]
        result = rollout(engine, segments, state.memory, spec)
        spiked = spiked or (spikes is not None and spikes.is_spike(result.loss_sum, result.tokens))
        if spiked:  # DeepSpeed skips an update whose gradients are not finite, on every rank: the step's update
            result.loss = result.loss * float("nan")  # is dropped, weights and optimizer moments untouched
        engine.backward(result.loss)
        engine.step()
        state.memory = result.memory
        sums[_LOSS] += result.loss_sum
        sums[_TOKENS] += result.tokens
        for batch in segments:
            sums[_RESTORED] += batch["restore"].sum()  # the lanes that took a parked memory (attach_parked)
            sums[_BY_SOURCE:].index_add_(0, batch["source"].clamp(min=0), target_counts(batch).double())
    state.step += 1

    sums[_STOPS] = float(stop is not None and stop.requested)  # a fill on the device, not a copy from the host
    sums[_DAMAGED] = float(len(damaged))
    applied = engine.was_step_applied()
    norm = _as_device_scalar(engine.get_global_grad_norm() if applied else float("nan"), spec.device)
    loss, tokens, restored, stops, damaged_met, *by_source, grad_norm = torch.cat([all_reduce(sums), norm]).tolist()
    elapsed = time.perf_counter() - started
    state.tokens += int(tokens)
    state.restored += int(restored)
    if damaged_met > 0:  # rare: every rank learns which documents were skipped
        note_damaged(state, all_gather_objects(damaged))
    for name, source_tokens in zip(spec.sources, by_source):
        state.tokens_by_source[name] = state.tokens_by_source.get(name, 0) + int(source_tokens)
    tokens_per_s, peak = tokens / elapsed, spec.peak_tflops
    return {
        "step": state.step,
        "loss": loss / max(tokens, 1.0),
        "lr": lr,
        "tokens": state.tokens,
        "tokens_per_s": tokens_per_s,
        "grad_norm": grad_norm if applied else None,
        "mfu": tokens_per_s * spec.flops_per_token / (spec.world_size * peak * 1e12) if peak else None,
        "step_time_s": elapsed,
        **feed.shares_since(loader_mark, elapsed),  # data_wait_share, loader_cpu_share
        "skipped_steps": engine.skipped_steps,
        "restored_documents": state.restored,
        "tokens_by_source": dict(state.tokens_by_source),
        "skipped_documents": len(state.bad_documents),
        "loss_spike": spiked,
        "stop_agreed": stops > 0,
    }


def note_damaged(state: TrainState, found: list[list[dict]]) -> None:
    """Record the damaged documents every rank's lanes met (the loader's `bad_documents` entries) in
    `state.bad_documents`, each document once however often and wherever it was met."""
    for bad in (bad for on_rank in found for bad in on_rank):
        state.bad_documents.setdefault(f"{bad['source']}:{bad['document']}", bad["description"])


def rollout(engine, segments: list[dict], memory: torch.Tensor, spec: StepSpec):
    """`run_rollout` of `segments` from `memory`, every segment's loss normalised by its target tokens over all
    ranks: the gradient is then the same however the lanes are spread over ranks (elastic resume is exact)."""
    target_tokens = all_reduce(torch.stack([target_counts(batch).sum() for batch in segments]))
    return run_rollout(
        engine,
        segments,
        memory,
        spec.weights,
        replay=spec.replay,
        pad_id=spec.pad_id,
        decoder_start_id=spec.decoder_start_id,
        target_tokens=target_tokens,
        loss_scale=float(spec.world_size),
    )


# the slots of the step's summed values (train_step)
_LOSS, _TOKENS, _RESTORED, _STOPS, _DAMAGED, _BY_SOURCE = range(6)


def _as_device_scalar(value, device: torch.device) -> torch.Tensor:
    """`value` (a tensor, as DeepSpeed's gradient norm is on a GPU, or a number) as a float64 `[1]` on `device`,
    without a copy from the host (a number becomes a fill)."""
    if torch.is_tensor(value):
        return value.detach().reshape(1).to(device=device, dtype=torch.float64)
    return torch.full((1,), float(value), dtype=torch.float64, device=device)


def target_counts(batch: dict) -> torch.Tensor:
    """Target tokens of each lane of a (noised) batch `[lanes]`: padding lanes and padding positions have none."""
    return (batch["labels"] != -100).sum(dim=1)


class LossSpikes:
    """train.loss_spike_factor: a rollout whose loss per target token (all ranks) exceeds `factor` × the median of
    the last `window` rollouts' is a spike, and its step's update is skipped (counted with the non-finite steps).
    Checked once `window` rollouts are known; spikes and non-finite losses do not enter the history, which lives
    in the TrainState (checkpointed, so a resume judges as the uninterrupted run would)."""

    def __init__(self, factor: float, window: int, history: list[float]):
        self.factor, self.window, self.history = factor, window, history

    def is_spike(self, loss_sum: torch.Tensor, tokens: torch.Tensor) -> bool:
        """Whether this rollout (its summed token loss and target tokens, on the device) is a spike, recording it
        when not. Collective: one host synchronisation."""
        loss_sum, tokens = all_reduce(torch.stack([loss_sum.double(), tokens.double()])).tolist()
        loss = loss_sum / max(tokens, 1.0)
        spike = len(self.history) >= self.window and loss > self.factor * statistics.median(self.history)
        if not spike and math.isfinite(loss):
            self.history.append(loss)
            del self.history[: -self.window]
        return spike


class NonFiniteGuard:
    """Counts skipped updates in a row (non-finite, or loss spikes); the run stops at `limit` of them
    (train.max_nonfinite_steps)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_a_row = 0

    def tripped(self, record: dict, logger) -> bool:
        """Account for a step's record (reporting a skipped update); True when the run must stop."""
        if record["grad_norm"] is not None:
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        why = "loss spike (train.loss_spike_factor)" if record.get("loss_spike") else "non-finite loss or gradient"
        logger.write(f"step {record['step']}: {why}, update skipped ({self.in_a_row} in a row)")
        if self.in_a_row < self.limit:
            return False
        logger.write(
            f"stopping: {self.in_a_row} consecutive skipped steps (train.max_nonfinite_steps)."
            " Lower train.lr, raise train.warmup_steps, or check the data."
        )
        return True


class DamagedDataGuard:
    """Reports each damaged document the loaders skipped (once) and stops the run when there are more than
    `limit` (data.max_bad_documents)."""

    def __init__(self, limit: int, state: TrainState):
        self.limit, self.state = limit, state
        self.reported = len(state.bad_documents)  # those of a resumed run were reported before

    def tripped(self, record: dict, logger) -> bool:
        """Report what the step found; True when the run must stop."""
        found = list(self.state.bad_documents.values())
        for index, description in enumerate(found[self.reported :], start=self.reported + 1):
            logger.write(f"step {record['step']}: skipped a damaged document ({index} so far): {description}")
        new, self.reported = len(found) > self.reported, len(found)
        if not new or len(found) <= self.limit:  # a resumed run stops again only for documents not known before
            return False
        logger.write(
            f"stopping: {len(found)} damaged documents skipped, more than data.max_bad_documents={self.limit}. "
            "Check the shards with data_prep/inspect_shards.py and restore them (or re-shard), or raise "
            "data.max_bad_documents; the run resumes from the checkpoint written now"
        )
        return True
