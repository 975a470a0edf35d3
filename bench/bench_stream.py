"""Stream scheduling at internet scale: epoch planning, resume and each batch per rank, by corpus and cluster size.

    python bench/bench_stream.py [--quick]

A corpus is D synthetic documents of 1..16 segments, their counts in a memory-mapped file (the way a rank sees the
`num_segments` column of a SHARD_DIR's memory-mapped index.npy). For D = 1M, 10M, 100M (quick: 1M, 10M), each in a
fresh process, as rank 0 of 64 ranks × 8 lanes:

* plan: open the counts, build the schedule and deal the epoch's first batch (what every rank does at an epoch
  start);
* resume: a mid-epoch state (half the epoch dealt, every lane holding a document) through its saved JSON form,
  re-spread to 32 ranks × 8 lanes (256 lanes, so 256 documents wait), then 100 batches;
* memory: the process's private (anonymous) resident memory after both, less the interpreter's before; the
  memory-mapped counts are page cache, shared by the ranks of a node.

Side by side, the version-1 scheduler this replaced (a sort of the whole epoch, then every rank's lane assignment
on every rank) at 1M and 10M documents. Target: plan + resume at 100M documents <= 10 s and <= 1 GB per rank.

Per batch (10M documents): the loader thread's schedule work on one rank of 16 lanes, for 512 and 16,384 global
lanes (32 and 1,024 ranks), mid-epoch. Every rank advances every global lane, so this is work that grows with the
cluster: target <= 2 ms per batch at 16,384 global lanes, and less than linear growth (<= 8x for 32x the lanes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import Result  # noqa: E402

COMMAND = "python bench/bench_stream.py"
RANKS, LANES = 64, 8
BATCH_LANES, SMALL_CLUSTER, LARGE_CLUSTER = 16, 512, 16384  # a rank's lanes; global lanes of 32 and 1024 ranks


def _anon_mb() -> float:
    """Private resident memory of this process, MB (RssAnon: not the page cache of mapped files)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _counts_file(path: Path, num_docs: int) -> None:
    """num_docs segment counts, 1..16, written in chunks (never all in memory)."""
    import numpy as np

    if path.is_file() and path.stat().st_size == 4 * num_docs:
        return
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.uint32, shape=(num_docs,))
    rng = np.random.default_rng(0)
    for start in range(0, num_docs, 1 << 22):
        stop = min(num_docs, start + (1 << 22))
        out[start:stop] = rng.integers(1, 17, size=stop - start, dtype=np.uint32)
    out.flush()
    del out
    path.with_suffix(".tmp.npy").rename(path)


def measure(path: Path) -> dict:
    """One corpus size, in this process: plan and resume seconds, private memory (see the module docstring)."""
    import numpy as np

    from memformers.data import Schedule, StreamState

    before = _anon_mb()
    started = time.perf_counter()
    counts = np.load(path, mmap_mode="r")
    schedule = Schedule(counts, seed=1234)
    state = StreamState.fresh(RANKS * LANES)
    schedule.next_batch(state)
    plan_s = time.perf_counter() - started

    num_docs = counts.shape[0]
    order = schedule.order(0)
    middle = StreamState.fresh(RANKS * LANES)
    middle.batch, middle.position = 1000, num_docs // 2
    for lane in range(middle.lanes):  # every lane mid-way through a document of the epoch's first half
        doc = order[middle.position - 1 - lane]
        middle.lane_doc[lane], middle.lane_start[lane] = doc, middle.batch - int(counts[doc]) // 2
    saved = json.dumps({"stream": middle.as_dict()})
    started = time.perf_counter()
    resumed = StreamState.from_dict(json.loads(saved)["stream"]).resize(RANKS // 2 * LANES)
    for _ in range(100):
        schedule.next_batch(resumed)
    resume_s = time.perf_counter() - started
    return {"documents": int(num_docs), "plan_s": plan_s, "resume_s": resume_s, "memory_mb": _anon_mb() - before}


def measure_v1(path: Path) -> dict:
    """The version-1 planning of one epoch on one rank: the sorted order and every rank's lane assignment."""
    import numpy as np

    from memformers.data.stream.legacy import assign_lanes_v1, epoch_order_v1

    before = _anon_mb()
    started = time.perf_counter()
    counts = np.load(path).astype(np.int64)  # version 1 read the whole index into memory
    order = epoch_order_v1(counts.size, 1234, 0)
    for rank in range(RANKS):
        assign_lanes_v1(counts[order[rank::RANKS]], LANES)
    return {"documents": int(counts.size), "plan_s": time.perf_counter() - started, "memory_mb": _anon_mb() - before}


def measure_batches(path: Path, global_lanes: int, batches: int = 400) -> dict:
    """What the loader's thread does per batch on a rank of `global_lanes` (ranks of BATCH_LANES lanes), in the
    middle of an epoch: advance the global schedule, take this rank's slots, snapshot the state. Seconds per batch."""
    import numpy as np

    from memformers.data import Schedule

    counts = np.load(path, mmap_mode="r")
    schedule = Schedule(counts, seed=1234)
    state = schedule.fresh(global_lanes)
    mine = range(0, BATCH_LANES)
    for _ in range(64):  # every lane mid-document, as after the first few batches of a run
        schedule.next_batch(state, mine)
    started = time.perf_counter()
    for _ in range(batches):
        schedule.next_batch(state, mine)
        state.copy()
    return {"global_lanes": global_lanes, "batch_s": (time.perf_counter() - started) / batches}


def _in_subprocess(function: str, path: Path) -> dict:
    code = (
        f"import json, pathlib, bench.bench_stream as b; print(json.dumps(b.{function}(pathlib.Path({str(path)!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[Result]:
    sizes = [1_000_000, 10_000_000] if quick else [1_000_000, 10_000_000, 100_000_000]
    work = Path("/tmp/memformers-bench-stream")
    work.mkdir(exist_ok=True)
    rows, old = [], []
    for size in sizes:
        path = work / f"counts-{size}.npy"
        _counts_file(path, size)
        rows.append(_in_subprocess("measure", path))
        if size <= 10_000_000:
            old.append(_in_subprocess("measure_v1", path))
    top = rows[-1]
    seconds = top["plan_s"] + top["resume_s"]
    detail = {"by_size": rows, "version_1": old, "ranks": RANKS, "lanes": LANES}
    counts_10m = work / "counts-10000000.npy"
    small, large = (measure_batches(counts_10m, lanes) for lanes in (SMALL_CLUSTER, LARGE_CLUSTER))
    per_batch = {"documents": 10_000_000, "rank_lanes": BATCH_LANES, "small": small, "large": large}
    return [
        Result(
            f"stream plan + resume, {top['documents'] // 1_000_000}M documents, one rank of {RANKS}x{LANES}",
            round(seconds, 3),
            "s",
            "<= 10 s",
            seconds <= 10,
            detail,
            COMMAND,
        ),
        Result(
            f"stream private memory, {top['documents'] // 1_000_000}M documents",
            round(top["memory_mb"], 1),
            "MB",
            "<= 1024 MB",
            top["memory_mb"] <= 1024,
            detail,
            COMMAND,
        ),
        Result(
            f"stream schedule per batch, one rank of {LARGE_CLUSTER:,} global lanes",
            round(large["batch_s"] * 1e3, 3),
            "ms",
            "<= 2 ms",
            large["batch_s"] <= 2e-3,
            per_batch,
            COMMAND,
        ),
        Result(
            f"stream schedule per batch, {LARGE_CLUSTER:,} / {SMALL_CLUSTER} global lanes",
            round(large["batch_s"] / small["batch_s"], 1),
            "ratio",
            f"<= 8 (work per lane in Python: {LARGE_CLUSTER // SMALL_CLUSTER})",
            large["batch_s"] / small["batch_s"] <= 8,
            per_batch,
            COMMAND,
        ),
        Result(
            "version-1 planning / global-lane planning, 10M documents",
            round(old[-1]["plan_s"] / rows[1]["plan_s"], 1),
            "ratio",
            "",
            None,
            detail,
            COMMAND,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1M and 10M documents only")
    args = parser.parse_args(argv)
    for result in run(args.quick):
        print(json.dumps(result.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
