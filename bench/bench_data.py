"""Data pipeline throughput, as ratios of things measured side by side in one run, and the sharder's memory.

    python bench/bench_data.py [--quick]

1. Sharding: tokens/s of `shard_documents` end to end (reading JSONL, tokenizing, segmenting, writing
   shards, index and manifest) with 1 and 2 workers, divided by the tokens/s of the bare fast
   tokenizer batch-encoding the same texts in memory on one thread (`encode_batch_fast`, chunks of
   1 MB). A worker tokenizes on one thread, so the baseline is one thread too. Targets: >= 0.85 with
   one worker; 2 workers >= 1.85x one worker where there are 2 free cores; the main process's CPU seconds
   per token <= 0.02x the bare tokenizer's (it only keeps the order: one node then scales past 50 workers).
   The load average before and after is recorded: rerun on a busy machine.
2. Loader: valid segments/s that `SegmentStreamLoader` yields (prefetch thread, 4 lanes, segments
   of 64 tokens), divided by the segments/s one training step of the tiny MemBART preset consumes
   (forward, backward and AdamW on the same batches, memory carried). Target: >= 100.
3. Loader for a GPU: target tokens/s of the training path's loader at the GPU check's shape (512-token segments,
   16 lanes, BART's noise in the prefetch thread: what `Corpus.stream` builds), divided by the target tokens/s
   membart-base consumes at issue 19's goal, 35% MFU of one H100 (989 dense bf16 TFLOP/s, the engine's
   `flops_per_token`; computed, not measured on a GPU). Target: >= 2, so that one loader thread per GPU keeps up
   and holds Python's lock a small share of the time. The goal for membart-large (45%) asks 0.44x base's tokens.
4. Loader beside a launch-bound loop: seconds per batch of a loop that, like an eager training loop on a fast
   GPU, only launches work (tiny torch ops, each letting go of Python's lock and taking it again; 15 ms of them
   per batch) and takes the next batch of 3.'s loader, with the producer in a thread, in a process
   (`producer="process"`, what `data.producer: auto` picks on a GPU), or from batches made beforehand. A
   thread's work holds the lock the loop needs. Target: the process costs the loop at most a third of what the
   thread costs it (the process's batches still cross a pipe and a receiving thread).
5. Sharding memory (not with --quick): peak RSS of the main process and of the largest of 2 workers, each run
   in a fresh process, on the benchmark corpus, on one 5 MB document, and on a 1 GB JSON lines file (the
   corpus repeated). A worker holds one unit of work (--block-bytes, at most 64 MiB of input) at a time, so its
   peak does not grow with the input.

The corpus is the synthetic one (memformers.recall.corpus) with a 2,000-piece BPE tokenizer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the baseline and each worker tokenize on one thread
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Result  # noqa: E402
from memformers.data import SegmentStreamLoader, load_tokenizer, shard_documents, train_tokenizer  # noqa: E402
from memformers.data.prep.tasks import block_size  # noqa: E402
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

    spec = load_tokenizer(tokenizer_dir).backend_tokenizer.to_str()
    chunks, chunk, size = [], [], 0
    for text in texts:
        chunk.append(text)
        size += len(text)
        if size >= 1 << 20:
            chunks.append(chunk)
            chunk, size = [], 0
    chunks.append(chunk)

    def baseline() -> tuple[int, float, float, float]:
        backend = Tokenizer.from_str(spec)  # a fresh one each run, as each run's workers make theirs
        backend.encode_special_tokens = True
        start, cpu = time.perf_counter(), time.process_time()
        tokens = sum(len(e.ids) for c in chunks for e in backend.encode_batch_fast(c, add_special_tokens=False))
        return tokens, time.perf_counter() - start, time.process_time() - cpu, 0.0

    def shard(workers: int, corpus: Path = corpus) -> tuple[int, float, float, float]:
        out = root / f"shards-w{workers}"
        shutil.rmtree(out, ignore_errors=True)  # the previous repeat's: deleting it is no part of sharding
        cpu, children = time.process_time(), _children_cpu()
        summary = shard_documents(
            [str(corpus)], tokenizer_dir, out, SEGMENT_LENGTH, workers=workers, val_fraction=0.01, progress=False
        )
        return summary.tokens_this_run, summary.seconds, time.process_time() - cpu, _children_cpu() - children

    load_before = os.getloadavg()
    runs: dict[str, list[tuple[float, float, float]]] = {"baseline": [], "w1": [], "w2": []}
    tokens = {}
    order = [("baseline", baseline), ("w1", lambda: shard(1)), ("w2", lambda: shard(2))]
    for repeat in range(repeats):  # interleaved, each first in turn, so that machine noise hits all alike
        for name, fn in order[repeat % 3 :] + order[: repeat % 3]:
            tokens[name], seconds, main_cpu, worker_cpu = fn()
            runs[name].append((tokens[name] / seconds, main_cpu / tokens[name], worker_cpu / tokens[name]))
    assert tokens["baseline"] == tokens["w1"] == tokens["w2"], tokens
    small = root / "small.jsonl"  # the main process's fixed cost: start-up, manifest, on 200 documents
    small.write_text("".join(line for line, _ in zip(corpus.open(encoding="utf-8"), range(200))), encoding="utf-8")
    startup_cpu = min(shard(1, small)[2] for _ in range(3))
    rate = {name: statistics.median(r[0] for r in rs) for name, rs in runs.items()}
    cpu = {
        name: (statistics.median(r[1] for r in rs), statistics.median(r[2] for r in rs)) for name, rs in runs.items()
    }
    main_cpu = max(cpu["w1"][0], cpu["w2"][0]) / cpu["baseline"][0]
    detail = {
        "tokens": tokens["baseline"],
        "documents": len(texts),
        "baseline_tokens_per_s": round(rate["baseline"]),
        "shard_1_worker_tokens_per_s": round(rate["w1"]),
        "shard_2_workers_tokens_per_s": round(rate["w2"]),
        "shard_2_workers_over_bare_tokenizer": round(rate["w2"] / rate["baseline"], 3),
        # CPU seconds per token, robust to other load on the machine: the baseline's (one thread) over the
        # sharding workers' (read, check, split, tokenize, segment, encode, write), and the main process's over
        # the baseline's, all of it (start-up included) and without the start-up (a fixed cost)
        "worker_cpu_efficiency": round(cpu["baseline"][0] / cpu["w1"][1], 3),
        "main_cpu_per_token_over_baseline_1_worker": round(cpu["w1"][0] / cpu["baseline"][0], 4),
        "main_cpu_per_token_over_baseline_2_workers": round(cpu["w2"][0] / cpu["baseline"][0], 4),
        "main_cpu_startup_s": round(startup_cpu, 3),
        "main_cpu_per_token_over_baseline_without_startup": round(
            (max(cpu["w1"][0], cpu["w2"][0]) - startup_cpu / tokens["w1"]) / cpu["baseline"][0], 4
        ),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "repeats": repeats,
    }
    ratio1, speedup = rate["w1"] / rate["baseline"], rate["w2"] / rate["w1"]
    two_cores = (os.cpu_count() or 1) >= 2
    results = [
        Result("sharding tokens/s, 1 worker / bare tokenizer (1 thread)", round(ratio1, 3), "ratio", ">= 0.85",
               ratio1 >= 0.85, detail, COMMAND),
        Result("sharding tokens/s, 2 workers / 1 worker (2 free cores)", round(speedup, 3), "ratio", ">= 1.85",
               speedup >= 1.85 if two_cores else None, detail, COMMAND),
        Result("sharding main-process CPU per token / bare tokenizer's", round(main_cpu, 4), "ratio", "<= 0.02",
               main_cpu <= 0.02, detail, COMMAND),
    ]  # fmt: skip
    return results, root / "shards-w1"


# Peak RSS: the main process's from /proc (its own address space: getrusage's ru_maxrss would carry over the
# forking parent's), the workers' from getrusage (they are forked from this process: their RSS counts what they share
# with it). "bare" is the tokenizer alone on the same input, in the same kind of process.
_MEMORY_RUN = """
import json, os, resource, sys, time
def peak_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
corpus, tokenizer, out, block = sys.argv[1:5]
started = time.perf_counter()
if out == "bare":
    from memformers.data import load_tokenizer
    backend = load_tokenizer(tokenizer).backend_tokenizer
    texts = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
    tokens = sum(len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=False))
    print(json.dumps({"tokenizer_alone_mb": peak_mb(), "tokens": tokens, "seconds": time.perf_counter() - started}))
    sys.exit()
from memformers.data import shard_documents
summary = shard_documents([corpus], tokenizer, out, 64, workers=2, val_fraction=0.01, overwrite=True, progress=False,
                          block_bytes=int(block) or None)
print(json.dumps({
    "main_mb": peak_mb(), "largest_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "tokens": summary.tokens_this_run, "seconds": time.perf_counter() - started,
}))
"""


def _peak_memory(corpus: Path, tokenizer_dir: Path, out: Path | None, block_bytes: int | None = None) -> dict:
    """Peak RSS (MB) of the main process and of the largest worker of a 2-worker run into `out` (None: of the
    tokenizer alone), in a fresh process; the unit of work as shard_documents chooses it (about 4 per worker, 1 to 64
    MiB of input) unless given."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    target = "bare" if out is None else str(out)
    command = [sys.executable, "-c", _MEMORY_RUN, str(corpus), str(tokenizer_dir), target, str(block_bytes or 0)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    if out is not None:
        shutil.rmtree(out)
    measured = {k: round(v, 1) for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}
    size = corpus.stat().st_size
    block = block_bytes or block_size(size, workers=2)
    return measured | {"input_mb": round(size / 2**20, 1), "block_mib": round(block / 2**20, 1)}


def bench_memory(root: Path, corpus: Path, tokenizer_dir: Path, texts: list[str]) -> list[Result]:
    one_document = root / "one-5mb-document.jsonl"
    text, i = [], 0
    while sum(map(len, text)) < 5 << 20:
        text.append(texts[i % len(texts)])
        i += 1
    one_document.write_text(json.dumps({"id": "big", "text": " ".join(text)}) + "\n", encoding="utf-8")
    big = root / "1gb.jsonl"
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    with open(big, "w", encoding="utf-8") as f:
        copy = 0
        while f.tell() < 1 << 30:
            f.write("".join(line.replace('{"id": "', f'{{"id": "{copy}-', 1) for line in lines))
            copy += 1
    small_block = corpus.stat().st_size // 8
    measured = {
        "benchmark_corpus": _peak_memory(corpus, tokenizer_dir, root / "mem-corpus"),
        "one_5mb_document": _peak_memory(one_document, tokenizer_dir, root / "mem-document"),
        "one_5mb_document_tokenizer_alone": _peak_memory(one_document, tokenizer_dir, None),
        "jsonl_1gb": _peak_memory(big, tokenizer_dir, root / "mem-1gb"),
        "jsonl_1gb_corpus_units": _peak_memory(big, tokenizer_dir, root / "mem-1gb-small", small_block),
    }
    big.unlink()
    corpus_peak, large = measured["benchmark_corpus"]["largest_worker_mb"], measured["jsonl_1gb"]["largest_worker_mb"]
    same_units = measured["jsonl_1gb_corpus_units"]["largest_worker_mb"] / corpus_peak
    units = measured["benchmark_corpus"]["block_mib"]
    return [
        Result("sharding peak RSS of the largest worker, 1 GB JSON lines file (64 MiB units)", round(large), "MB",
               "", None, measured, COMMAND),
        Result(f"sharding worker peak RSS, 1 GB file / {measured['benchmark_corpus']['input_mb']} MB corpus, both in "
               f"{units} MiB units", round(same_units, 3), "ratio", "<= 1.1 (set by the unit, not the input)",
               same_units <= 1.1, measured, COMMAND),
        Result("sharding peak RSS of the largest worker, one 5 MB document", round(
            measured["one_5mb_document"]["largest_worker_mb"]), "MB",
            f"the tokenizer alone: {round(measured['one_5mb_document_tokenizer_alone']['tokenizer_alone_mb'])}", None,
            measured, COMMAND),
    ]  # fmt: skip


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


GPU_SEGMENT_LENGTH, GPU_LANES = 512, 16
GOAL_MFU = {"membart-base": 0.35, "membart-large": 0.45}  # issue 19, on one H100


def bench_loader_for_gpu(root: Path, corpus: Path, tokenizer_dir: Path, batches: int) -> list[Result]:
    from memformers.models.membart import load_preset
    from memformers.noising import BartDenoiser, DenoisingConfig
    from memformers.training.distributed import PEAK_TFLOPS
    from memformers.training.engine import flops_per_token

    shards = root / "shards-512"
    shard_documents([str(corpus)], tokenizer_dir, shards, GPU_SEGMENT_LENGTH, workers=2, val_fraction=0.0,
                    progress=False)  # fmt: skip
    denoiser = BartDenoiser.for_tokenizer(DenoisingConfig(), load_tokenizer(shards), seed=0)
    loader = SegmentStreamLoader(shards, "train", lanes=GPU_LANES, segment_length=GPU_SEGMENT_LENGTH, seed=0,
                                 epochs=None, transform=denoiser.collate)  # fmt: skip
    iterator = iter(loader)
    for _ in range(20):  # warm up: thread started, first documents read
        next(iterator)
    start, tokens = time.perf_counter(), 0
    for _ in range(batches):
        tokens += int((next(iterator)["labels"] != -100).sum())  # training.step.target_counts
    rate = tokens / (time.perf_counter() - start)
    iterator.close()
    demand = {
        p: round(mfu * PEAK_TFLOPS["H100"] * 1e12 / flops_per_token(load_preset(p))) for p, mfu in GOAL_MFU.items()
    }
    ratio = rate / demand["membart-base"]
    return [Result(
        "loader target tokens/s (512-token segments, BART noise) / membart-base's at 35% MFU on an H100",
        round(ratio, 2), "ratio", ">= 2", ratio >= 2,
        {"loader_target_tokens_per_s": round(rate), "goal_demand_tokens_per_s": demand,
         "lanes": GPU_LANES, "segment_length": GPU_SEGMENT_LENGTH, "loader_batches": batches,
         "demand": "computed from the MFU goal and flops_per_token, not measured on a GPU"},
        COMMAND,
    )]  # fmt: skip


LAUNCH_S = 0.015  # host time a launch-bound training loop spends per batch (~membart-base's GPU time per batch)


def _launches(count: int, x) -> None:
    import torch

    for _ in range(count):  # a tiny op: each, like a kernel launch, lets go of the GIL and takes it again
        torch.add(x, 1.0, out=x)


def bench_loader_beside_a_launch_loop(shards: Path, batches: int, repeats: int) -> list[Result]:
    """Seconds per batch of a launch-bound loop (tiny torch ops, LAUNCH_S per batch, then the next batch) fed by
    the training path's loader with its producer in a thread, in a process, or from batches made beforehand."""
    import torch

    from memformers.noising import BartDenoiser, DenoisingConfig

    torch.set_num_threads(1)
    denoiser = BartDenoiser.for_tokenizer(DenoisingConfig(), load_tokenizer(shards), seed=0)
    x = torch.zeros(16)
    started = time.perf_counter()
    _launches(5000, x)
    count = int(LAUNCH_S / ((time.perf_counter() - started) / 5000))

    def loop(take) -> float:
        started = time.perf_counter()
        for _ in range(batches):
            take()
            _launches(count, x)
        return (time.perf_counter() - started) / batches

    def loader(producer: str):
        settings = dict(lanes=GPU_LANES, segment_length=GPU_SEGMENT_LENGTH, seed=0, epochs=None, prefetch=4)
        return iter(SegmentStreamLoader(shards, "train", transform=denoiser.collate, producer=producer, **settings))

    made = loader("thread")
    ready = [next(made) for _ in range(64)]
    made.close()
    times: dict[str, list[float]] = {"alone": [], "thread": [], "process": []}
    for _ in range(repeats):  # interleaved: drift hits the three alike
        cycle = itertools.cycle(ready)
        times["alone"].append(loop(lambda: next(cycle)))
        for producer in ("thread", "process"):
            batches_of = loader(producer)
            for _ in range(8):  # started, prefetch queue full
                next(batches_of)
            times[producer].append(loop(lambda: next(batches_of)))
            batches_of.close()
    per_batch = {name: statistics.median(ts) for name, ts in times.items()}
    detail = {"seconds_per_batch": per_batch, "ops_per_batch": count, "lanes": GPU_LANES,
              "segment_length": GPU_SEGMENT_LENGTH, "batches": batches, "repeats": repeats}  # fmt: skip
    thread, process = (per_batch[name] / per_batch["alone"] for name in ("thread", "process"))
    target = 1 + (thread - 1) / 3
    return [
        Result("launch-bound loop time per batch, loader producer in a thread / batches made beforehand",
               round(thread, 3), "ratio", "", None, detail, COMMAND),
        Result("launch-bound loop time per batch, loader producer in a process / batches made beforehand",
               round(process, 3), "ratio", f"<= {target:.3f} (a third of the thread's cost)", process <= target,
               detail, COMMAND),
    ]  # fmt: skip


def run(quick: bool = False) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        root = Path(tmp)
        corpus, tokenizer_dir, texts = _corpus(root, 4000 if quick else 20000)
        results, shards = bench_sharding(root, corpus, tokenizer_dir, texts, repeats=1 if quick else 6)
        results += bench_loader(shards, batches=2000 if quick else 10000, steps=10 if quick else 30)
        results += bench_loader_for_gpu(root, corpus, tokenizer_dir, batches=300 if quick else 2000)
        results += bench_loader_beside_a_launch_loop(root / "shards-512", 100 if quick else 300, 1 if quick else 3)
        if not quick:
            results += bench_memory(root, corpus, tokenizer_dir, texts)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller corpus, fewer repeats")
    for result in run(parser.parse_args().quick):
        print(json.dumps(result.as_dict()))
