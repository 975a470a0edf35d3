"""The throughput half of `make gpu-check` (bench/gpu_check.py): the real training path (config, corpus, loader with
its noiser in a producer process, as `data.producer: auto` has it on a GPU, `build_model`, `build_engine` with
DeepSpeed ZeRO-2, `train_step`) timed on a corpus of long documents, for a model, BPTT or memory replay, eager or
`model.compile`.

Lanes are sized by a probe: one rollout of full-length segments with 1 lane, then 2 lanes, through a real engine
(after a step that allocated the optimizer states); the difference of the two peaks is one lane's memory, the rest
is fixed (weights, gradients, fp32 masters, Adam states, DeepSpeed's buffers). The run takes as many lanes as fit
in `MEMORY_SHARE` of the device's memory. Without a GPU (the dry run) there is no peak to read and the lanes are
the plan's.
"""

from __future__ import annotations

import gc
import statistics
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from memformers.models.membart import load_preset
from memformers.training.batches import SegmentFeed
from memformers.training.compiling import CompileClock
from memformers.training.config import load_config
from memformers.training.corpus import Corpus
from memformers.training.distributed import seed_everything
from memformers.training.engine import build_engine, build_model, initial_memory, model_dtype
from memformers.training.recurrence import loss_weights, run_rollout
from memformers.training.state import TrainState, attach_parked
from memformers.training.step import StepSpec, train_step

MEMORY_SHARE = 0.85  # of the device's memory: headroom for the allocator's fragmentation and the compiled graphs
MAX_LANES = 64


def make_corpus(root: Path, segment_length: int, documents: int) -> Path:
    """A SHARD_DIR of long synthetic documents and its tokenizer: ~12 segments of `segment_length` tokens per
    document, filled to ~93% (segments end at a sentence end), as in a corpus of long documents."""
    from memformers.data import shard_documents, train_tokenizer
    from memformers.recall import SyntheticConfig, write_synthetic_corpus

    corpus = root / "corpus.jsonl"
    write_synthetic_corpus(corpus, documents, SyntheticConfig(seed=0, facts_per_doc=16, gap_words=8 * segment_length))
    train_tokenizer([str(corpus)], root / "tokenizer", 4000, progress=False)
    shard_documents([str(corpus)], tokenizer=str(root / "tokenizer"), output=str(root / "shards"),
                    segment_length=segment_length, val_fraction=0.0, progress=False)  # fmt: skip
    return root / "shards"


def run_config(plan, shards: Path, run_dir: Path, preset: str, lanes: int, *, replay: bool, compiled: bool):
    """The pretraining config of one measured run: the plan's DeepSpeed JSON (ZeRO-2; bf16 on a GPU), T segments
    per rollout, one rollout per optimizer step (the lanes fill the memory; no accumulation needed)."""
    overrides = [
        f"run_dir={run_dir}", f"data.path={shards}", f"data.lanes={lanes}", "data.prefetch=8", "data.producer=process",
        f"model.preset={preset}", f"model.compile={compiled}", f"deepspeed={plan.deepspeed}",
        f"train.time_horizon={plan.time_horizon}", "train.rollouts_per_step=1", f"train.memory_replay={replay}",
        "train.warmup_steps=100", "logging.wandb=disabled", "logging.progress_bar=false",
    ]  # fmt: skip
    return load_config(None, overrides)


class Run:
    """One engine of the training path, built from `cfg` on `runtime`, with the vocabulary of `preset` (the
    synthetic corpus's tokenizer is smaller; its ids are a subset)."""

    def __init__(self, cfg, runtime, preset: str):
        seed_everything(cfg.seed)
        self.runtime, self.device = runtime, runtime.device
        self.corpus = Corpus.open(cfg.data, cfg.noise, seed=cfg.seed, runtime=runtime)
        self.clock = CompileClock(enabled=cfg.model.compile)
        vocab = max(len(self.corpus.tokenizer), load_preset(preset).vocab_size)
        with torch.device(self.device):  # initialised where it trains: seconds instead of a minute for large
            model = build_model(
                cfg, tokenizer_size=vocab, special_ids=self.corpus.special, segment_length=self.corpus.segment_length
            )
        self.engine = build_engine(model, cfg, runtime)
        self.state = TrainState(memory=initial_memory(self.engine, cfg.data.lanes, self.device))
        self.batches = iter(self.corpus.stream("train", None))
        self.feed = SegmentFeed(self.batches, self.device, lambda b: attach_parked(b, self.state.parked))
        self.spec = StepSpec.of(cfg.train, self.engine, runtime)
        self.engine.train()

    def close(self) -> float | None:
        """Free the engine; returns the GiB still allocated on the GPU after it (what a leak would leave)."""
        self.batches.close()  # stops the loader's prefetch thread
        self.clock.close()
        self.engine.destroy()
        del self.engine, self.state, self.feed
        gc.collect()
        if self.device.type != "cuda":
            return None
        torch.cuda.empty_cache()
        return torch.cuda.memory_allocated(self.device) / 2.0**30


def probe_lanes(plan, shards: Path, run_dir: Path, runtime, preset: str, replay: bool) -> dict:
    """Peak memory of a rollout of 1 and of 2 lanes of full-length segments → the lanes that fit (see the module)."""
    cfg = run_config(plan, shards, run_dir, preset, 1, replay=replay, compiled=False)
    run = Run(cfg, runtime, preset)
    try:
        peaks = [_probe_rollout(run, lanes, plan) for lanes in (1, 1, 2)]  # the first allocates the optimizer
    finally:
        run.close()
    if peaks[-1] is None:
        return {"lanes": plan.lanes, "probe": "no memory statistics on this device: the plan's lanes"}
    per_lane, fixed = peaks[2] - peaks[1], 2 * peaks[1] - peaks[2]
    budget = MEMORY_SHARE * torch.cuda.mem_get_info(runtime.device)[1]
    lanes = max(1, min(MAX_LANES, int((budget - fixed) // max(per_lane, 1))))
    gib = 2.0**30
    return {"lanes": lanes, "per_lane_gib": per_lane / gib, "fixed_gib": fixed / gib, "budget_gib": budget / gib}


def _probe_rollout(run: Run, lanes: int, plan) -> int | None:
    engine, device = run.engine, run.device
    vocab = run.corpus.tokenizer.vocab_size
    g = torch.Generator().manual_seed(lanes)
    batches = []
    for t in range(plan.time_horizon):
        ids = torch.randint(5, vocab, (lanes, plan.segment_length + 2), generator=g)
        batch = {"source_ids": ids, "source_mask": torch.ones_like(ids, dtype=torch.bool), "labels": ids}
        batches.append({**batch, "resets": torch.full((lanes,), t == 0)})
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    memory = engine.module.construct_memory(lanes).to(device, model_dtype(engine))
    result = run_rollout(engine, batches, memory, loss_weights(len(batches), "uniform"), replay=run.spec.replay,
                         pad_id=run.spec.pad_id, decoder_start_id=run.spec.decoder_start_id)  # fmt: skip
    engine.backward(result.loss)
    engine.step()
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def measure(plan, cfg, runtime, preset: str, count_syncs: bool = False) -> dict:
    """`plan.warmup_steps` steps (the compile happens there), then `plan.timed_steps` timed ones: tokens/s and
    MFU (medians of the steps' records: the engine's own figures), peak memory, the loader's share of the time
    (blocked on it) and of the host (its producer's CPU time).
    Only the fused SDPA backends are allowed: a fall back to the math kernel fails the run instead of slowing it."""
    run, result = Run(cfg, runtime, preset), {}
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            result |= _timed_steps(plan, run, count_syncs)
        result |= {
            "lanes": cfg.data.lanes,
            "compile_s": run.clock.seconds if cfg.model.compile else None,
            "optimizer": _optimizer_name(run.engine),
            "dtypes": {"weights": str(model_dtype(run.engine)), "masters": _master_dtype(run.engine)},
        }
        return result
    finally:
        result["memory_left_after_gib"] = run.close()


def _timed_steps(plan, run: Run, count_syncs: bool) -> dict:
    started = time.perf_counter()
    for _ in range(plan.warmup_steps):
        train_step(run.engine, run.feed, run.state, run.spec)
    warmup_s = time.perf_counter() - started
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    compiles = run.clock.compiles
    records = [train_step(run.engine, run.feed, run.state, run.spec) for _ in range(plan.timed_steps)]
    peak = torch.cuda.max_memory_allocated(run.device) / 2.0**30 if run.device.type == "cuda" else None
    result = {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
        "mfu": _median_or_none([r["mfu"] for r in records]),
        "step_time_s": statistics.median(r["step_time_s"] for r in records),
        "data_wait_share": statistics.mean(r["data_wait_share"] for r in records),
        "loader_cpu_share": statistics.mean(r["loader_cpu_share"] for r in records),
        "peak_memory_gib": peak,
        "loss": records[-1]["loss"],
        "warmup_s": warmup_s,
        # a variant first met after the warm-up (e.g. the first batch without padding) compiles in a timed step:
        # the medians stand while it is fewer than half of the timed steps
        "compiles_in_timed_steps": run.clock.compiles - compiles,
    }
    if count_syncs:
        result["host_syncs_per_step"] = _count_syncs(run)
    return result


def _count_syncs(run: Run) -> dict:
    """The host synchronisations of one step, by the package that asked (CUDA's sync check warns at each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(run.engine, run.feed, run.state, run.spec)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    origins = Counter()
    for warning in caught:
        if "synchroniz" not in str(warning.message):
            continue
        path = warning.filename
        package = next((p for p in ("memformers", "transformers", "deepspeed", "torch") if f"/{p}/" in path), path)
        origins[f"{package}: {Path(path).name}:{warning.lineno}"] += 1
    return dict(origins)


def _median_or_none(values: list) -> float | None:
    return statistics.median(values) if all(v is not None for v in values) else None


def _optimizer_name(engine) -> str:
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    fused = inner.defaults.get("fused") if hasattr(inner, "defaults") else None
    return f"{type(inner).__module__}.{type(inner).__name__}" + (" (fused)" if fused else "")


def _master_dtype(engine) -> str | None:
    groups = getattr(engine.optimizer, "single_partition_of_fp32_groups", None)  # ZeRO 1-2
    return str(groups[0].dtype) if groups else None
