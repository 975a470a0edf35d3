"""Engine benchmarks, each a ratio measured side by side in one process.

    python bench/bench_engine.py [--quick]

1. Step efficiency: the full training step (SegmentStreamLoader with the BART noiser in its background thread,
   the rollout through a DeepSpeed engine, `engine.backward`, `engine.step`) in tokens/s, divided by a bare loop on
   the same batches (the same model's forward with memory, cross-entropy, backward, `torch.optim.AdamW`, on the
   batches the full step draws, prepared beforehand), 4 rollouts of 4 segments per optimizer step as in base.yaml.
   Target >= 0.92.
2. Memory replay: peak activation memory of one rollout with `memory_replay` at T=16 divided by T=1 (target <= 1.25),
   next to plain BPTT's growth with T; and replay step time / BPTT step time at T=16 (target <= 1.35: one extra
   forward). On the CPU, peak memory is measured exactly: every tensor storage created while the rollout runs is
   counted while it is alive (a TorchDispatchMode with weakref finalizers), weights and optimizer excluded.

Both run in fp32 on the CPU (bf16 on a CPU is emulated and would measure the emulation).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
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

MODEL = dict(
    d_model=256,
    encoder_layers=3,
    decoder_layers=3,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=1024,
    decoder_ffn_dim=1024,
    memory_len=16,
    dropout=0.0,
    max_position_embeddings=160,
)


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
    from memformers.data import shard_documents, train_tokenizer
    from memformers.recall import write_synthetic_corpus

    corpus = root / "corpus.jsonl"
    write_synthetic_corpus(corpus, docs)
    train_tokenizer([str(corpus)], root / "tokenizer", 1000, progress=False)
    shard_documents(
        [str(corpus)],
        tokenizer=str(root / "tokenizer"),
        output=str(root / "shards"),
        segment_length=segment_length,
        val_fraction=0.0,
        progress=False,
    )
    return root / "shards"


def synthetic_segments(count: int, lanes: int, length: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(count):
        ids = torch.randint(5, vocab, (lanes, length), generator=g)
        ids[:, 0], ids[:, -1] = 0, 2
        out.append(
            {
                "source_ids": ids,
                "source_mask": torch.ones_like(ids, dtype=torch.bool),
                "labels": ids,
                "resets": torch.full((lanes,), t == 0),
            }
        )
    return out


def step_efficiency(quick: bool) -> Result:
    import deepspeed

    from memformers.data import SegmentStreamLoader, load_tokenizer
    from memformers.noising import BartDenoiser, DenoisingConfig, token_tables
    from memformers.training.distributed import init_runtime

    # A training step as base.yaml makes one (time_horizon 4, rollouts_per_step 4), at CPU-sized lanes and
    # segments: per-step costs (ZeRO's gradient partitioning, the optimizer) weigh as they do in training.
    lanes, horizon, rollouts, length = 4, 4, 4, 128
    warmup, repeats = 1, 3 if quick else 8
    init_runtime()
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_corpus(Path(tmp), 400, length)
        tokenizer = load_tokenizer(shards)
        config = load_preset("tiny", vocab_size=1000, **MODEL)
        torch.manual_seed(0)
        bare_model = MemBartForConditionalGeneration(config).train()
        engine_model = MemBartForConditionalGeneration(config).train()
        engine_model.load_state_dict(bare_model.state_dict())
        ds = {
            "train_micro_batch_size_per_gpu": lanes,
            "gradient_accumulation_steps": rollouts,
            "gradient_clipping": 1.0,
            "zero_optimization": {"stage": 2},
            "steps_per_print": 10**9,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
        }
        engine, *_ = deepspeed.initialize(model=engine_model, model_parameters=engine_model.parameters(), config=ds)
        denoiser = BartDenoiser(
            DenoisingConfig(),
            token_tables(tokenizer),
            mask_id=tokenizer.mask_token_id,
            bos_id=0,
            eos_id=2,
            pad_id=1,
            vocab_size=len(tokenizer),
            seed=0,
        )

        def loader(prefetch: int) -> SegmentStreamLoader:
            return SegmentStreamLoader(
                shards,
                "train",
                rank=0,
                world_size=1,
                lanes=lanes,
                segment_length=length,
                seed=0,
                epochs=None,
                transform=denoiser.collate,
                prefetch=prefetch,
            )

        # The bare loop gets, prepared beforehand, exactly the batches the full step will draw from its loader
        # (same seed, same order): the same shapes, padding included, call for call.
        per_step = horizon * rollouts
        twin = iter(loader(0))
        prepared = [[next(twin) for _ in range(per_step)] for _ in range(warmup + repeats)]
        twin.close()
        batches = iter(loader(8))
        weights = loss_weights(horizon, "uniform")
        optimizer = torch.optim.AdamW(bare_model.parameters(), lr=1e-4)
        state = {
            "engine_memory": engine.module.construct_memory(lanes),
            "bare_memory": bare_model.construct_memory(lanes),
            "bare": 0,
        }

        def full_step():
            for _ in range(rollouts):
                result = run_rollout(
                    engine,
                    [next(batches) for _ in range(horizon)],
                    state["engine_memory"],
                    weights,
                    replay=False,
                    pad_id=1,
                    decoder_start_id=2,
                )
                engine.backward(result.loss)
                engine.step()
                state["engine_memory"] = result.memory

        def bare_step():
            segments = prepared[state["bare"]]
            state["bare"] += 1
            for r in range(rollouts):
                memory = state["bare_memory"]
                loss = 0.0
                for batch in segments[r * horizon : (r + 1) * horizon]:
                    out = bare_model(
                        input_ids=batch["source_ids"],
                        attention_mask=batch["source_mask"],
                        memory_states=memory,
                        memory_resets=batch["resets"],
                        labels=batch["labels"],
                    )
                    loss, memory = loss + out.loss / horizon / rollouts, out.memory_states
                loss.backward()
                state["bare_memory"] = memory.detach()
            torch.nn.utils.clip_grad_norm_(bare_model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = interleaved({"full": full_step, "bare": bare_step}, repeats=repeats, warmup=warmup)
        batches.close()  # end the iteration, then the loader's prefetch thread
    # both sides process the same batches, so tokens/s ratio = time ratio
    tokens_per_step = statistics.mean(sum(int((b["labels"] != -100).sum()) for b in step) for step in prepared)
    ratio = times["bare"] / times["full"]
    return Result(
        name="full training step tokens/s ÷ bare fwd+bwd+AdamW tokens/s",
        value=round(ratio, 3),
        unit="ratio",
        target=">= 0.92",
        passed=ratio >= 0.92,
        detail={
            "lanes": lanes,
            "time_horizon": horizon,
            "rollouts_per_step": rollouts,
            "segment_length": length,
            "model": MODEL,
            "full_tokens_per_s": round(tokens_per_step / times["full"]),
            "bare_tokens_per_s": round(tokens_per_step / times["bare"]),
            "engine": "DeepSpeed ZeRO-2, 1 process, fp32; loader + noiser in the background thread",
        },
        command="python bench/bench_engine.py",
    )


def rollout(model, segments: list[dict], replay: bool):
    """One rollout over `segments` from a fresh memory."""
    return run_rollout(
        model,
        segments,
        model.construct_memory(segments[0]["source_ids"].shape[0]),
        loss_weights(len(segments), "uniform"),
        replay=replay,
        pad_id=1,
        decoder_start_id=2,
    )


def rollout_backward(model, segments: list[dict], replay: bool) -> None:
    """One rollout and its backward: what a training step spends on memory recurrence."""
    rollout(model, segments, replay).loss.backward()


def rollout_peak(model, horizon: int, replay: bool, lanes: int, length: int) -> int:
    """Peak live bytes created during one rollout + backward (weights, gradients and buffers excluded)."""
    segments = synthetic_segments(horizon, lanes, length, model.config.vocab_size)
    model.zero_grad(set_to_none=False)  # gradient buffers exist before measuring: they are not activations
    tracker = PeakLiveBytes(existing=[*model.parameters(), *(p.grad for p in model.parameters()), *model.buffers()])
    with tracker:
        rollout_backward(model, segments, replay)
    return tracker.peak


def replay_memory(quick: bool) -> list[Result]:
    # 4 lanes x 256 tokens per segment: as at training shapes, one segment's activations are several times
    # the weights' size. That matters for T=1 only: from T=2 on, autograd holds one extra gradient's worth of
    # memory during backward (a weight's gradient from later segments waits in its accumulation buffer until
    # the earlier segments have added theirs), a constant the size of the weights, independent of T.
    lanes, length, horizon = 4, 256, 16
    torch.manual_seed(0)
    dims = {**MODEL, "max_position_embeddings": length + 8}
    model = MemBartForConditionalGeneration(load_preset("tiny", vocab_size=1000, **dims)).train()
    for p in model.parameters():  # allocate .grad once, outside the measurement
        p.grad = torch.zeros_like(p)
    horizons = [1, 2, 4, horizon]
    peaks = {
        (mode, t): rollout_peak(model, t, mode == "replay", lanes, length)
        for mode in ("replay", "bptt")
        for t in horizons
    }
    segments = synthetic_segments(horizon, lanes, length, model.config.vocab_size)

    def forward_only() -> None:
        with torch.no_grad():
            rollout(model, segments, replay=False)

    times = interleaved(
        {
            "replay": lambda: rollout_backward(model, segments, True),
            "bptt": lambda: rollout_backward(model, segments, False),
            "forward": forward_only,
        },
        repeats=2 if quick else 5,
    )
    growth = peaks["replay", horizon] / peaks["replay", 1]
    slowdown = times["replay"] / times["bptt"]
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    detail = {f"{mode}_T{t}_peak_MiB": mib(peaks[mode, t]) for mode in ("replay", "bptt") for t in horizons}
    detail.update(
        lanes=lanes,
        segment_length=length,
        model=dims,
        weights_MiB=mib(sum(p.numel() * p.element_size() for p in model.parameters())),
    )
    return [
        Result(
            name=f"peak activation memory, memory replay, T={horizon} ÷ T=1",
            value=round(growth, 3),
            unit="ratio",
            target="<= 1.25",
            passed=growth <= 1.25,
            detail={
                **detail,
                f"bptt_T{horizon}_over_T1": round(peaks["bptt", horizon] / peaks["bptt", 1], 2),
                f"replay_T{horizon}_over_T2": round(peaks["replay", horizon] / peaks["replay", 2], 3),
                f"replay_T{horizon}_minus_T4_MiB": mib(peaks["replay", horizon] - peaks["replay", 4]),
            },
            command="python bench/bench_engine.py",
        ),
        Result(
            name=f"step time, memory replay ÷ plain BPTT, T={horizon}",
            value=round(slowdown, 3),
            unit="ratio",
            target="<= 1.35",
            passed=slowdown <= 1.35,
            detail={
                "replay_s": round(times["replay"], 3),
                "bptt_s": round(times["bptt"], 3),
                # replay's floor: BPTT plus one more forward of every segment but the last
                "forward_s": round(times["forward"], 3),
                "floor_1_plus_forward_over_bptt": round(
                    1 + times["forward"] * (horizon - 1) / horizon / times["bptt"], 3
                ),
                "lanes": lanes,
                "segment_length": length,
            },
            command="python bench/bench_engine.py",
        ),
    ]


def run(quick: bool = False) -> list[Result]:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return [step_efficiency(quick), *replay_memory(quick)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    for result in run(parser.parse_args().quick):
        print(json.dumps(result.as_dict()))
