"""The training step's paths in one process, on the real components (config, corpus, model, DeepSpeed ZeRO-2 in
fp32, loader with its noiser, `train_step`), printed as one JSON line:

- `losses`: 3 steps of the tiny model for each of BPTT / memory replay, eager / `model.compile`, from one seed;
- `reads`: per optimizer step, the operations that read a device value back to the host (`.item()`, `float()`,
  `bool()` of a tensor, `nonzero`, ...: each a host synchronisation on a GPU), by the code that asked for them
  (memformers, transformers, deepspeed), counted in eager steps 2 and 3 (after the first step's set-up).

    DS_ACCELERATOR=cpu python tests/scripts/train_paths.py SHARD_DIR RUN_DIR

A `.tolist()` of a CPU tensor does not dispatch an operation, so the step's one read (the record's numbers) is
not counted here; on a GPU, `bench/gpu_check.py` counts every synchronisation with CUDA's own sync check.
"""

import json
import sys
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from memformers.training.batches import SegmentFeed
from memformers.training.compiling import CompileClock
from memformers.training.config import load_config
from memformers.training.corpus import Corpus
from memformers.training.distributed import init_runtime, seed_everything
from memformers.training.engine import build_engine, build_model, initial_memory
from memformers.training.state import TrainState, attach_parked
from memformers.training.step import StepSpec, train_step

# operations that need a device value on the host (the data-dependent shapes included)
READS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_consecutive", "repeat_interleave"}
TORCH = str(Path(torch.__file__).parent)


class DeviceReads(TorchDispatchMode):
    """Counts READS operations by the innermost caller outside torch (which package asked)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in READS:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(TORCH):
                frame = frame.f_back
            path = frame.f_code.co_filename if frame is not None else "?"
            origin = next((name for name in ("memformers", "transformers", "deepspeed") if f"/{name}/" in path), path)
            origin += f" {Path(path).name}:{frame.f_lineno}"
            self.counts[f"{origin}: {func.__name__}"] += 1
        return func(*args, **(kwargs or {}))


def run(shards: str, run_dir: Path, runtime, *, replay: bool, compiled: bool, count_reads: bool) -> dict:
    overrides = [
        f"run_dir={run_dir}", f"data.path={shards}", "data.lanes=2", "data.prefetch=2", "train.time_horizon=2",
        "train.warmup_steps=2", "deepspeed=ds_configs/zero2_fp32.json", f"train.memory_replay={replay}",
        f"model.compile={compiled}", "logging.wandb=disabled",
    ]  # fmt: skip
    cfg = load_config("pretrain/configs/tiny.yaml", overrides)
    seed_everything(cfg.seed)
    corpus = Corpus.open(cfg.data, cfg.noise, seed=cfg.seed, runtime=runtime)
    clock = CompileClock(enabled=compiled)
    model = build_model(
        cfg, tokenizer_size=len(corpus.tokenizer), special_ids=corpus.special, segment_length=corpus.segment_length
    )
    engine = build_engine(model, cfg, runtime)
    state = TrainState(memory=initial_memory(engine, cfg.data.lanes, runtime.device))
    feed = SegmentFeed(iter(corpus.stream("train", None)), runtime.device, lambda b: attach_parked(b, state.parked))
    spec = StepSpec.of(cfg.train, engine, runtime)
    engine.train()
    losses, reads = [], []
    for step in range(3):
        mode = DeviceReads() if count_reads and step > 0 else None
        with mode if mode is not None else nullcontext():
            record = train_step(engine, feed, state, spec)
        losses.append(record["loss"])
        if mode is not None:
            reads.append(dict(mode.counts))
    return {"losses": losses, "reads": reads, "compile_s": clock.seconds, "compiles": clock.compiles}


def main() -> None:
    shards, run_dir = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    runtime = init_runtime()
    out = {}
    for replay in (False, True):
        for compiled in (False, True):
            name = f"{'replay' if replay else 'bptt'}-{'compiled' if compiled else 'eager'}"
            out[name] = run(shards, run_dir / name, runtime, replay=replay, compiled=compiled, count_reads=not compiled)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
