"""Run under a 2-process launcher: one rollout with memory replay and one with plain BPTT on identical engines;
print the max relative gradient difference (full gradients gathered from ZeRO partitions) as JSON on rank 0.

    torchrun --nproc_per_node 2 tests/scripts/replay_grads.py STAGE
"""

import json
import sys

import deepspeed
import torch
from deepspeed.utils import safe_get_full_grad

from memformers.models.membart import MemBartConfig, MemBartForConditionalGeneration
from memformers.training.distributed import init_runtime
from memformers.training.recurrence import loss_weights, run_rollout

CFG = dict(
    vocab_size=64,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_position_embeddings=64,
    memory_len=4,
    dropout=0.0,
    init_std=0.1,
)


def segments(rank: int, count: int = 3, lanes: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(100 + rank)
    out = []
    for t in range(count):
        ids = torch.randint(4, 64, (lanes, 9), generator=g)
        ids[:, 0], ids[:, -1] = 0, 2
        out.append(
            {
                "source_ids": ids,
                "source_mask": torch.ones_like(ids, dtype=torch.bool),
                "labels": ids,
                "resets": torch.tensor([t == 0] * lanes),
            }
        )
    return out


def grads(stage: int, replay: bool) -> dict:
    torch.manual_seed(0)
    model = MemBartForConditionalGeneration(MemBartConfig(**CFG))
    ds = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    memory = engine.module.construct_memory(2)
    result = run_rollout(
        engine,
        segments(engine.global_rank),
        memory,
        loss_weights(3, "exponential"),
        replay=replay,
        pad_id=1,
        decoder_start_id=2,
    )
    engine.backward(result.loss)
    out = {name: safe_get_full_grad(p).clone() for name, p in engine.module.named_parameters()}
    engine.destroy()
    return out


def main() -> None:
    stage = int(sys.argv[1])
    runtime = init_runtime()
    plain, replay = grads(stage, replay=False), grads(stage, replay=True)
    worst = max(((replay[n] - plain[n]).abs().max() / plain[n].abs().max().clamp(min=1e-12)).item() for n in plain)
    nonzero = sum(int(plain[n].abs().sum() > 0) for n in plain)
    if runtime.is_main:
        print(json.dumps({"stage": stage, "max_rel_diff": worst, "params": len(plain), "nonzero": nonzero}))


if __name__ == "__main__":
    main()
