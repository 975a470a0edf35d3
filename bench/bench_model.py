"""MemBART vs BART: forward+backward time per token with identical dimensions, measured side by side.

    python bench/bench_model.py [--quick]

membart-base dims (d768, 6+6 layers, 12 heads, ffn 3072), sequence 512, memory 64 slots, batch 4, fp32 on the
CPU. The structural FLOP overhead of 64 memory slots (extra encoder rows with their own weights) is ~1.06–1.08;
target ratio ≤ 1.10.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import BartConfig, BartForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `python bench/...`

from bench.common import Result, interleaved
from memformers.models.membart import MemBartForConditionalGeneration, load_preset


def run(quick: bool = False) -> list[Result]:
    torch.manual_seed(0)
    batch, seq = (2, 256) if quick else (4, 512)
    config = load_preset("membart-base", dropout=0.0)
    bart_fields = {k: v for k, v in config.to_dict().items() if k not in ("memory_len", "model_type", "architectures")}
    membart = MemBartForConditionalGeneration(config).train()
    bart = BartForConditionalGeneration(BartConfig(**bart_fields)).train()
    ids = torch.randint(4, config.vocab_size, (batch, seq))
    memory = membart.construct_memory(batch)

    def step(model, **extra):
        def fn():
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids, **extra).loss.backward()

        return fn

    times = interleaved({"membart": step(membart, memory_states=memory), "bart": step(bart)}, repeats=2 if quick else 4)
    ratio = times["membart"] / times["bart"]
    tokens = batch * seq
    return [
        Result(
            name="MemBART / BART fwd+bwd time per token (membart-base dims)",
            value=round(ratio, 3),
            unit="ratio",
            target="<= 1.10",
            passed=ratio <= 1.10,
            detail={
                "batch": batch,
                "seq": seq,
                "memory_len": config.memory_len,
                "membart_tokens_per_s": round(tokens / times["membart"], 1),
                "bart_tokens_per_s": round(tokens / times["bart"], 1),
            },
            command="python bench/bench_model.py" + (" --quick" if quick else ""),
        )
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    for result in run(parser.parse_args().quick):
        print(json.dumps(result.as_dict()))
