"""Data pipeline throughput, as ratios of things measured side by side in one run.

    python bench/bench_data.py [--quick]

1. Sharding: tokens/s of `shard_documents` end to end (reading JSONL, tokenizing, segmenting, writing
   shards, index and manifest) with 1 and 2 workers, divided by the tokens/s of the bare fast
   tokenizer batch-encoding the same texts in memory on one thread (`encode_batch_fast`, chunks of
   1 MB). A worker tokenizes on one thread, so the baseline is one thread too. Targets: >= 0.85 with
   one worker; near-linear in workers (2 workers / 1 worker close to 2 where there are 2 free cores).
2. Loader: valid segments/s that `SegmentStreamLoader` yields (prefetch thread, 4 lanes, segments
   of 64 tokens), divided by the segments/s one training step of the tiny MemBART preset consumes
   (forward, backward and AdamW on the same batches, memory carried). Target: >= 100.

The corpus is the synthetic one (memformers.recall.corpus) with a 2,000-piece BPE tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the baseline and each worker tokenize on one thread
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result  # noqa: E402
from memformers.data import SegmentStreamLoader, load_tokenizer, shard_documents, train_tokenizer  # noqa: E402
from memformers.recall import SyntheticConfig, generate_documents  # noqa: E402

SEGMENT_LENGTH = 64
LANES = 4
COMMAND = "python bench/bench_data.py"


def _corpus(root: Path, num_docs: int) -> tuple[Path, Path, list[str]]:
    docs = list(generate_documents(num_docs, SyntheticConfig(seed=0)))
    path = root / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    sample = root / "sample.jsonl"
    sample.write_text("".join(json.dumps(d) + "\n" for d in docs[:2000]), encoding="utf-8")
    tokenizer = root / "tokenizer"
    train_tokenizer([str(sample)], tokenizer, 2000, model_type="bpe", progress=False)
    return path, tokenizer, [d["text"] for d in docs]


def bench_sharding(
    root: Path, corpus: Path, tokenizer_dir: Path, texts: list[str], repeats: int
) -> tuple[list[Result], Path]:
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(load_tokenizer(tokenizer_dir).backend_tokenizer.to_str())
    backend.encode_special_tokens = True
    chunks, chunk, size = [], [], 0
    for text in texts:
        chunk.append(text)
        size += len(text)
        if size >= 1 << 20:
            chunks.append(chunk)
            chunk, size = [], 0
    chunks.append(chunk)

    def baseline() -> tuple[int, float, float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        tokens = sum(len(e.ids) for c in chunks for e in backend.encode_batch_fast(c, add_special_tokens=False))
        return tokens, time.perf_counter() - start, time.process_time() - cpu, 0.0

    def shard(workers: int) -> tuple[int, float, float, float]:
        out = root / f"shards-w{workers}"
        cpu, children = time.process_time(), _children_cpu()
        summary = shard_documents(
            [str(corpus)], tokenizer_dir, out, SEGMENT_LENGTH, workers=workers, val_fraction=0.01,
            overwrite=True, progress=False,
        )  # fmt: skip
        return summary.tokens_this_run, summary.seconds, time.process_time() - cpu, _children_cpu() - children

    runs: dict[str, list[tuple[float, float, float]]] = {"baseline": [], "w1": [], "w2": []}
    tokens = {}
    for _ in range(repeats):  # interleaved, so machine noise hits all alike
        for name, fn in (("baseline", baseline), ("w1", lambda: shard(1)), ("w2", lambda: shard(2))):
            tokens[name], seconds, main_cpu, worker_cpu = fn()
            runs[name].append((tokens[name] / seconds, main_cpu / tokens[name], worker_cpu / tokens[name]))
    assert tokens["baseline"] == tokens["w1"] == tokens["w2"], tokens
    rate = {name: statistics.median(r[0] for r in rs) for name, rs in runs.items()}
    cpu = {
        name: (statistics.median(r[1] for r in rs), statistics.median(r[2] for r in rs)) for name, rs in runs.items()
    }
    detail = {
        "tokens": tokens["baseline"],
        "documents": len(texts),
        "baseline_tokens_per_s": round(rate["baseline"]),
        "shard_1_worker_tokens_per_s": round(rate["w1"]),
        "shard_2_workers_tokens_per_s": round(rate["w2"]),
        # CPU seconds per token, robust to other load on the machine: the baseline's (one thread) over
        # the sharding workers' (tokenize, segment, encode), and the main process's (read, split, write).
        "worker_cpu_efficiency": round(cpu["baseline"][0] / cpu["w1"][1], 3),
        "main_cpu_per_token_over_baseline": round(cpu["w1"][0] / cpu["baseline"][0], 3),
        "cpu_count": os.cpu_count(),
        "repeats": repeats,
    }
    ratio1, ratio2 = rate["w1"] / rate["baseline"], rate["w2"] / rate["baseline"]
    results = [
        Result("sharding tokens/s, 1 worker / bare tokenizer (1 thread)", round(ratio1, 3), "ratio", ">= 0.85",
               ratio1 >= 0.85, detail, COMMAND),
        Result("sharding tokens/s, 2 workers / bare tokenizer (1 thread)", round(ratio2, 3), "ratio",
               "near-linear: ~2x the 1-worker ratio with 2 free cores", None,
               detail | {"speedup_2_over_1_workers": round(rate["w2"] / rate["w1"], 3)}, COMMAND),
    ]  # fmt: skip
    return results, root / "shards-w1"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_loader(shards: Path, batches: int, steps: int) -> list[Result]:
    import torch

    from memformers.models.membart import MemBartForConditionalGeneration, load_preset

    loader = SegmentStreamLoader(shards, "train", lanes=LANES, segment_length=SEGMENT_LENGTH, seed=0, epochs=None)
    iterator = iter(loader)
    for _ in range(20):  # warm up: thread started, first documents read
        next(iterator)
    start = time.perf_counter()
    segments = 0
    for _ in range(batches):
        segments += int(next(iterator)["valid"].sum())
    loader_rate = segments / (time.perf_counter() - start)
    train_batches = [next(iterator) for _ in range(steps + 2)]
    iterator.close()

    tokenizer = load_tokenizer(shards)
    torch.manual_seed(0)
    config = load_preset("tiny", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         decoder_start_token_id=tokenizer.eos_token_id)  # fmt: skip
    model = MemBartForConditionalGeneration(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    memory = model.construct_memory(LANES)

    def step(batch: dict) -> torch.Tensor:
        labels = batch["input_ids"].masked_fill(~batch["attention_mask"], -100)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], memory_states=memory,
                    memory_resets=batch["resets"], labels=labels)  # fmt: skip
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.memory_states.detach()

    for batch in train_batches[:2]:  # warm up
        memory = step(batch)
    start = time.perf_counter()
    segments = 0
    for batch in train_batches[2:]:
        memory = step(batch)
        segments += int(batch["valid"].sum())
    train_rate = segments / (time.perf_counter() - start)
    ratio = loader_rate / train_rate
    return [Result(
        "loader segments/s / tiny-model training step segments/s", round(ratio, 1), "ratio", ">= 100", ratio >= 100,
        {"loader_segments_per_s": round(loader_rate), "train_step_segments_per_s": round(train_rate, 1),
         "lanes": LANES, "segment_length": SEGMENT_LENGTH, "loader_batches": batches, "train_steps": steps,
         "torch_threads": torch.get_num_threads()},
        COMMAND,
    )]  # fmt: skip


def run(quick: bool = False) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        root = Path(tmp)
        corpus, tokenizer_dir, texts = _corpus(root, 4000 if quick else 20000)
        results, shards = bench_sharding(root, corpus, tokenizer_dir, texts, repeats=1 if quick else 3)
        results += bench_loader(shards, batches=2000 if quick else 10000, steps=10 if quick else 30)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller corpus, fewer repeats")
    for result in run(parser.parse_args().quick):
        print(json.dumps(result.as_dict()))
