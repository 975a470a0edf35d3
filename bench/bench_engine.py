"""Engine benchmarks, each a ratio measured side by side in one process.

    python bench/bench_engine.py [--quick]

1. Step efficiency: the full training step (SegmentStreamLoader with the BART noiser in its background thread,
   the rollout through a DeepSpeed engine, `engine.backward`, `engine.step`) in tokens/s, divided by a bare loop on
   the same shapes (the same model's forward with memory, cross-entropy, backward, `torch.optim.AdamW`, on batches
   prepared beforehand). Target >= 0.92.
2. Memory replay: peak activation memory of one rollout with `memory_replay` at T=16 divided by T=1 (target <= 1.25),
   next to plain BPTT's growth with T; and replay step time / BPTT step time at T=16 (target <= 1.35: one extra
   forward). On the CPU, peak memory is measured exactly: every tensor storage created while the rollout runs is
   counted while it is alive (a TorchDispatchMode with weakref finalizers), weights and optimizer excluded.

Both run in fp32 on the CPU (bf16 on a CPU is emulated and would measure the emulation).
"""

from __future__ import annotations

import argparse
import sys
import json
import os
import tempfile
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `python bench/...`

from bench.common import Result, interleaved
from memformers.models.membart import MemBartForConditionalGeneration, load_preset
from memformers.training.recurrence import loss_weights, run_rollout

MODEL = dict(d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
             encoder_ffn_dim=1024, decoder_ffn_dim=1024, memory_len=16, dropout=0.0, max_position_embeddings=160)


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the mode and still alive (views share their storage).

    `existing` tensors (weights, gradients, buffers) are not counted when an op returns a view of them (`aten.t`
    of a weight, in every linear layer): their memory was there before and stays after."""

    def __init__(self, existing=()):
        super().__init__()
        self.existing = {id(t.untyped_storage()) for t in existing}
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                key = id(storage)
                if key not in self.live and key not in self.existing:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def make_corpus(root: Path, docs: int, segment_length: int) -> Path:
    """A real SHARD_DIR of the synthetic corpus, built with the library the data_prep scripts wrap."""
    from memformers.data import shard_documents, train_tokenizer, write_synthetic_corpus

    corpus = root / "corpus.jsonl"
    write_synthetic_corpus(corpus, docs)
    train_tokenizer([str(corpus)], root / "tokenizer", 1000, progress=False)
    shard_documents([str(corpus)], tokenizer=str(root / "tokenizer"), output=str(root / "shards"),
                    segment_length=segment_length, val_fraction=0.0, progress=False)
    return root / "shards"


def synthetic_segments(count: int, lanes: int, length: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(count):
        ids = torch.randint(5, vocab, (lanes, length), generator=g)
        ids[:, 0], ids[:, -1] = 0, 2
        out.append({"source_ids": ids, "source_mask": torch.ones_like(ids, dtype=torch.bool), "labels": ids,
                    "resets": torch.full((lanes,), t == 0)})
    return out


def step_efficiency(quick: bool) -> Result:
    import deepspeed

    from memformers.data import SegmentStreamLoader, load_tokenizer
    from memformers.noising import BartDenoiser, DenoisingConfig, token_tables
    from memformers.training.distributed import init_runtime

    lanes, horizon, length = 4, 4, 128
    init_runtime()
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_corpus(Path(tmp), 400, length)
        tokenizer = load_tokenizer(shards)
        config = load_preset("tiny", vocab_size=1000, **MODEL)
        torch.manual_seed(0)
        bare_model = MemBartForConditionalGeneration(config).train()
        engine_model = MemBartForConditionalGeneration(config).train()
        engine_model.load_state_dict(bare_model.state_dict())
        ds = {"train_micro_batch_size_per_gpu": lanes, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
              "zero_optimization": {"stage": 2}, "steps_per_print": 10**9,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}}}
        engine, *_ = deepspeed.initialize(model=engine_model, model_parameters=engine_model.parameters(), config=ds)
        denoiser = BartDenoiser(DenoisingConfig(), token_tables(tokenizer), mask_id=tokenizer.mask_token_id,
                                bos_id=0, eos_id=2, pad_id=1, vocab_size=len(tokenizer), seed=0)
        loader = SegmentStreamLoader(shards, "train", rank=0, world_size=1, lanes=lanes, segment_length=length,
                                     seed=0, epochs=None, transform=denoiser.collate, prefetch=8)
        batches = iter(loader)
        weights = loss_weights(horizon, "uniform")
        state = {"memory": engine.module.construct_memory(lanes), "tokens": 0}
        # the bare loop gets batches of exactly the shapes the full step sees
        prepared = [next(batches) for _ in range(horizon)]
        optimizer = torch.optim.AdamW(bare_model.parameters(), lr=1e-4)

        def full_step():
            segments = [next(batches) for _ in range(horizon)]
            result = run_rollout(engine, segments, state["memory"], weights, replay=False, pad_id=1,
                                 decoder_start_id=2)
            engine.backward(result.loss)
            engine.step()
            state["memory"] = result.memory
            state["tokens"] = sum(int((s["labels"] != -100).sum()) for s in segments)

        def bare_step():
            memory = bare_model.construct_memory(lanes)
            loss = 0.0
            for batch in prepared:
                out = bare_model(input_ids=batch["source_ids"], attention_mask=batch["source_mask"],
                                 memory_states=memory, memory_resets=batch["resets"], labels=batch["labels"])
                loss, memory = loss + out.loss / horizon, out.memory_states
            loss.backward()
            torch.nn.utils.clip_grad_norm_(bare_model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = interleaved({"full": full_step, "bare": bare_step}, repeats=4 if quick else 12, warmup=2)
        batches.close()  # end the iteration, then the loader's prefetch thread
        loader.close()
    full_tps = state["tokens"] / times["full"]
    bare_tokens = sum(int((s["labels"] != -100).sum()) for s in prepared)
    bare_tps = bare_tokens / times["bare"]
    ratio = full_tps / bare_tps
    return Result(
        name="full training step tokens/s ÷ bare fwd+bwd+AdamW tokens/s", value=round(ratio, 3), unit="ratio",
        target=">= 0.92", passed=ratio >= 0.92,
        detail={"lanes": lanes, "time_horizon": horizon, "segment_length": length, "model": MODEL,
                "full_tokens_per_s": round(full_tps), "bare_tokens_per_s": round(bare_tps),
                "engine": "DeepSpeed ZeRO-2, 1 process, fp32; loader + noiser in the background thread"},
        command="python bench/bench_engine.py",
    )


def rollout_cost(model, horizon: int, replay: bool, lanes: int, length: int) -> tuple[int, float]:
    """(peak live activation bytes, seconds) of one rollout + backward."""
    import time

    segments = synthetic_segments(horizon, lanes, length, model.config.vocab_size)
    model.zero_grad(set_to_none=False)  # gradient buffers exist before measuring: they are not activations
    memory = model.construct_memory(lanes)
    tracker = PeakLiveBytes(existing=[*model.parameters(), *(p.grad for p in model.parameters()), *model.buffers()])
    start = time.perf_counter()
    with tracker:
        result = run_rollout(model, segments, memory, loss_weights(horizon, "uniform"), replay=replay, pad_id=1,
                             decoder_start_id=2)
        result.loss.backward()
        del result
    return tracker.peak, time.perf_counter() - start


def replay_memory(quick: bool) -> list[Result]:
    lanes, length = 2, 128
    torch.manual_seed(0)
    model = MemBartForConditionalGeneration(load_preset("tiny", vocab_size=1000, **MODEL)).train()
    for p in model.parameters():  # allocate .grad once, outside the measurement
        p.grad = torch.zeros_like(p)
    horizons = [1, 2, 4, 16]
    peaks = {(mode, t): rollout_cost(model, t, mode == "replay", lanes, length)[0]
             for mode in ("replay", "bptt") for t in horizons}
    times = interleaved({mode: (lambda m=mode: rollout_cost(model, 16, m == "replay", lanes, length))
                         for mode in ("replay", "bptt")}, repeats=2 if quick else 4)
    growth = peaks["replay", 16] / peaks["replay", 1]
    slowdown = times["replay"] / times["bptt"]
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    detail = {f"{mode}_T{t}_peak_MiB": mib(peaks[mode, t]) for mode in ("replay", "bptt") for t in horizons}
    detail.update(lanes=lanes, segment_length=length, model=MODEL)
    return [
        Result(name="peak activation memory, memory replay, T=16 ÷ T=1", value=round(growth, 3), unit="ratio",
               target="<= 1.25", passed=growth <= 1.25,
               detail={**detail, "bptt_T16_over_T1": round(peaks["bptt", 16] / peaks["bptt", 1], 2),
                       # from T=2 on a segment's backward also carries the next segment's memory gradient
                       "replay_T16_over_T2": round(peaks["replay", 16] / peaks["replay", 2], 3)},
               command="python bench/bench_engine.py"),
        Result(name="step time, memory replay ÷ plain BPTT, T=16", value=round(slowdown, 3), unit="ratio",
               target="<= 1.35", passed=slowdown <= 1.35,
               detail={"replay_s": round(times["replay"], 3), "bptt_s": round(times["bptt"], 3)},
               command="python bench/bench_engine.py"),
    ]


def run(quick: bool = False) -> list[Result]:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return [step_efficiency(quick), *replay_memory(quick)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    for result in run(parser.parse_args().quick):
        print(json.dumps(result.as_dict()))
