"""Sharding in slices (e.g. one Slurm array task each, slurm/prepare_data.sh) and merging the slices.

    shard_documents(..., num_slices=N, slice_index=I)   # N tasks, on any nodes sharing the filesystem
    shard_documents(..., num_slices=N, merge=True)      # once, after all N succeeded

give the SHARD_DIR that `shard_documents(...)` without them gives: the same files, byte for byte.

The slice rule (`plan_slices`). The inputs are resolved in reading order (sources.py) and laid end to end,
each weighing its size in bytes (a saved dataset: its files; a 🤗 dataset name: 0). T is the total.

* At least N inputs: slice I is a contiguous run of whole inputs. The cut between slices I-1 and I is the
  input boundary nearest to I*T/N bytes (the earlier one on a tie), every slice keeping at least one input.
* Fewer inputs than slices: slice I covers bytes [I*T//N, (I+1)*T//N) of the inputs laid end to end. An
  uncompressed JSON lines file (.jsonl, or a .json that is not one JSON array) is cut at line starts: a
  line belongs to the slice holding its first byte. Any other input (a .txt is one document; compressed
  files, .parquet, datasets) is read whole by the slice holding its first byte, so a slice may be empty.

Either way the slices' documents, concatenated in slice order, are the single-process document stream.
A slice beginning inside a file reads that file's bytes before its range once, only to count lines (a
sample names its source as `file:line`); it tokenizes nothing outside its range.

A slice (`shard_slice`) runs the pipeline of a single run (pipeline.tokenize_into) over its parts into
its own folder, `SHARD_DIR/.slices/slice-IIIII/`, a small shard directory with shards numbered from 0 in
the slice, its own `.progress/` and tokenizer copy, and `slice.json`, written last, which marks the slice
done: its state (settings, inputs, N, I), its parts, the positions each split took (documents, those
without tokens included), shard records and read statistics. A slice writes nothing outside its folder
(so slices may run at once on several nodes) and never `manifest.json` or `SHARD_DIR/tokenizer/`; re-run,
it resumes from its finished shards, or does nothing when `slice.json` is there.

The merge (`merge_slices`) checks that all N slices are done with this run's settings and inputs
(IncompleteSlicesError naming the others: exit status 1 of the script), then re-numbers the samples: the
n-th document of a split over all slices (slice I's local position plus the positions of the slices
before it) goes to shard n // K, position n % K, exactly as in a single run. Only the tar headers of each
sample change (its key `{split}-{shard:06d}-{pos:06d}`); the token arrays are copied as they are. Each merged
shard is one job (`merge_jobs`) that a worker process writes (`--workers`; writer.remap: re-key, CRC-32, sha256,
commit), so the merge scales with the merge job's cores like the slices. It writes the tokenizer copy, the shards,
each `index.npy` and `manifest.json` (stats summed over the slices), then removes `.slices/`. Re-running it after
that does nothing; an interrupted merge starts over from the slices, which are only removed at the end.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memformers.files import write_json_atomic

from ..errors import DataError, IncompleteSlicesError
from .output import (
    OWNED,
    PROGRESS_DIR,
    SLICES_DIR,
    differences,
    discarded_on_bad_input,
    finished_state,
    folder_entries,
    refusal,
    remove_entries,
)
from .pipeline import (
    Job,
    check_written,
    copy_tokenizer,
    make_job,
    read_statistics,
    run_merge_jobs,
    tokenize_into,
    write_manifest,
)
from .sources import ReadStats, Source
from .summary import ShardingSummary
from .worker import MergeJob
from .writer import SliceRun, finish_split

SLICE_INFO = "slice.json"


def slice_dir(out: Path, index: int) -> Path:
    """The folder of slice `index` inside the SHARD_DIR `out`."""
    return out / SLICES_DIR / f"slice-{index:05d}"


def slice_state(state: dict[str, Any], index: int, count: int) -> dict[str, Any]:
    """A slice's state: the run's settings and inputs, and which slice of how many."""
    return {**state, "slices": {"count": count, "index": index}}


# -- the slice rule -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One input of a slice: all of it (start = end = None), or its lines that start in bytes [start, end)."""

    source: Source
    start: int | None = None
    end: int | None = None

    def describe(self) -> str:
        where = self.source.location
        return where if self.start is None else f"{where} bytes [{self.start}, {self.end})"

    def as_tuple(self) -> tuple[Source, int | None, int | None]:
        return self.source, self.start, self.end


def _line_splittable(source: Source) -> bool:
    """An uncompressed JSON lines file."""
    return source.kind == "json" and not source.compression and not source.is_json_array()


def plan_slices(sources: list[Source], count: int) -> list[list[Part]]:
    """The parts of each of `count` slices of `sources` (see the module docstring for the rule)."""
    weights = [s.size for s in sources]  # bytes (0 for a 🤗 dataset name)
    if len(sources) >= count:
        cuts = _input_cuts(weights, count)
        return [[Part(s) for s in sources[a:b]] for a, b in zip(cuts, cuts[1:])]
    return _byte_ranges(sources, weights, count)


def _input_cuts(weights: list[int], count: int) -> list[int]:
    """Cut points 0 = c0 < c1 < ... < cN = len(weights): slice I holds inputs [cI, cI+1)."""
    ends = list(itertools.accumulate(weights))
    total = ends[-1]
    cuts = [0]
    for i in range(1, count):
        lo, hi = cuts[-1] + 1, len(weights) - (count - i)
        after = bisect.bisect_left(ends, i * total, key=lambda end: end * count) + 1  # first end >= i*T/N
        candidates = [c for c in (after - 1, after) if lo <= c <= hi] or [min(max(after, lo), hi)]
        cuts.append(min(candidates, key=lambda c: (abs(ends[c - 1] * count - i * total), c)))
    return cuts + [len(weights)]


def _byte_ranges(sources: list[Source], weights: list[int], count: int) -> list[list[Part]]:
    """Slices of the inputs laid end to end, [I*T//N, (I+1)*T//N) each; whole inputs where not line-split."""
    total = sum(weights)
    bounds = [i * total // count for i in range(count + 1)]
    slices: list[list[Part]] = [[] for _ in range(count)]
    start = 0
    for source, weight in zip(sources, weights):
        if weight and _line_splittable(source):
            for i in range(count):
                a, b = max(bounds[i], start) - start, min(bounds[i + 1], start + weight) - start
                if a < b:
                    slices[i].append(Part(source) if (a, b) == (0, weight) else Part(source, a, b))
        else:
            slices[max(i for i in range(count) if bounds[i] <= start)].append(Part(source))
        start += weight
    return slices


# -- entry point ---------------------------------------------------------------------------------------


def run_sliced(
    inputs: list[str],
    tokenizer: str | os.PathLike,
    output: str | os.PathLike,
    segment_length: int,
    options: dict[str, Any],
    num_slices: int | None,
    slice_index: int | None,
    merge: bool,
    overwrite: bool,
) -> ShardingSummary:
    """Check the slice arguments, then run one slice or the merge (shard_documents' sliced mode)."""
    started = time.perf_counter()
    if num_slices is None or num_slices < 1:
        raise DataError(f"--num-slices must be a positive integer with --slice-index or --merge, got {num_slices}")
    if merge == (slice_index is not None):
        raise DataError("with --num-slices, give either --slice-index I (tokenize slice I) or --merge, not both")
    if slice_index is not None and not 0 <= slice_index < num_slices:
        raise DataError(
            f"--slice-index must be in [0, {num_slices - 1}] for --num-slices {num_slices}, got {slice_index}"
        )
    job = make_job(inputs, tokenizer, output, segment_length, options)
    if merge:
        return merge_slices(job, num_slices, overwrite, started)
    return shard_slice(job, slice_index, num_slices, overwrite, started)


def _finished(job: Job, overwrite: bool) -> bool:
    """Whether the SHARD_DIR is already finished with this run's state (read only; safe alongside other slices).

    DataError when it is not a shard directory, or finished with other settings (unless `overwrite`: the
    merge then replaces it)."""
    previous = finished_state(job.out, folder_entries(job.out))
    if previous is None or (previous != job.state and overwrite):
        return False
    if previous != job.state:
        raise refusal(job.out, "a finished shard set", previous, job.state)
    return True


# -- one slice -----------------------------------------------------------------------------------------


def shard_slice(job: Job, index: int, count: int, overwrite: bool, started: float) -> ShardingSummary:
    """Tokenize slice `index` of `count` into SHARD_DIR/.slices/slice-IIIII/ (resuming); its summary."""
    label = f"slice {index} of {count} (0-based)"
    if _finished(job, overwrite):
        return ShardingSummary.of_finished(
            job.out, seconds=time.perf_counter() - started, workers=job.workers, label=f"{label}: already merged into"
        )
    directory = slice_dir(job.out, index)
    state = slice_state(job.state, index, count)
    info = _prepare_slice(directory, state, overwrite, label)
    if info is not None:
        return _slice_summary(directory, info, label, time.perf_counter() - started, job, already_complete=True)
    parts = plan_slices(job.reader.sources, count)[index]
    fresh = not (directory / PROGRESS_DIR / "state.json").is_file()
    with discarded_on_bad_input(directory.parent, (directory.name,), fresh, existed=True):
        result = tokenize_into(job, directory, state, [p.as_tuple() for p in parts], f"slice {index}")
    info = {
        "state": state,
        "parts": [p.describe() for p in parts],
        "positions": {split: result.positions[split] for split in job.splits},
        "splits": {split: finish_split(directory, split, result.records) for split in job.splits},
        "stats": read_statistics(result.stats, result.records),
        **{k: v for k, v in result.stats.as_dict().items() if k.endswith("_examples")},
    }
    write_json_atomic(directory / SLICE_INFO, info)  # last: marks the slice done
    shutil.rmtree(directory / PROGRESS_DIR)
    return _slice_summary(
        directory,
        info,
        label,
        time.perf_counter() - started,
        job,
        shards_written=len(result.records) - result.reused,
        tokens_this_run=result.tokens,
    )


def _prepare_slice(directory: Path, state: dict[str, Any], overwrite: bool, label: str) -> dict[str, Any] | None:
    """Make the slice's folder ready; its slice.json when the slice is already done with `state`.

    An unfinished slice with the same state is resumed; a slice of another run (settings, inputs, or
    --num-slices) is refused unless `overwrite`, which deletes it; leftovers without a record are deleted."""
    done, running = directory / SLICE_INFO, directory / PROGRESS_DIR / "state.json"
    previous = None
    if done.is_file():
        info = json.loads(done.read_text(encoding="utf-8"))
        if info.get("state") == state:
            return info
        previous, what = info.get("state", {}), f"a finished {label}"
    elif running.is_file():
        previous, what = json.loads(running.read_text(encoding="utf-8")), f"an unfinished {label}"
    if previous is not None and previous != state and not overwrite:
        raise refusal(directory, what, previous, state)
    if previous != state and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return None


def _slice_summary(directory: Path, info: dict, label: str, seconds: float, job: Job, **counts: Any) -> ShardingSummary:
    """`counts`: already_complete, or what this run wrote (shards_written, tokens_this_run)."""
    return ShardingSummary.from_record(
        info,
        directory,
        seconds=seconds,
        workers=job.workers,
        label=label,
        ignored_files=job.reader.stats.ignored_files,
        examples=_examples([info]),
        **counts,
    )


# -- the merge -----------------------------------------------------------------------------------------


@dataclass
class _Slice:
    """A finished slice: its index, folder and slice.json."""

    index: int
    directory: Path
    info: dict[str, Any] = field(repr=False)


def merge_slices(job: Job, count: int, overwrite: bool, started: float) -> ShardingSummary:
    """Merge the `count` finished slices into the SHARD_DIR (see the module docstring); its summary."""
    out = job.out
    if _finished(job, overwrite):
        remove_entries(out, (SLICES_DIR,))  # left by a merge interrupted after its manifest
        return ShardingSummary.of_finished(
            out, seconds=time.perf_counter() - started, workers=0, label="shard directory (merged)"
        )
    slices = finished_slices(out, job.state, count)
    remove_entries(out, tuple(name for name in OWNED if name != SLICES_DIR))
    for split in job.splits:
        (out / split).mkdir(parents=True)
    (out / PROGRESS_DIR).mkdir()
    tok = copy_tokenizer(job, out)
    jobs = [j for split in job.splits for j in merge_jobs(split, slices, job.settings["docs_per_shard"])]
    records = run_merge_jobs(job, tok, jobs)
    stats = _sum_statistics([s.info["stats"] for s in slices])
    examples = _examples([s.info for s in slices])
    check_written(stats, examples.bad_record_examples)
    manifest = write_manifest(job, tok, records, stats)
    shutil.rmtree(out / PROGRESS_DIR)
    shutil.rmtree(out / SLICES_DIR)
    return ShardingSummary.from_record(
        manifest,
        out,
        seconds=time.perf_counter() - started,
        workers=job.workers,
        label=f"shard directory (merged from {count} slice{'s' if count > 1 else ''})",
        shards_written=len(records),
        ignored_files=job.reader.stats.ignored_files,
        examples=examples,
    )


def finished_slices(out: Path, state: dict[str, Any], count: int) -> list[_Slice]:
    """The `count` slices of this run, all done; IncompleteSlicesError naming each one that is not."""
    slices, problems = [], []
    for index in range(count):
        directory = slice_dir(out, index)
        problem, info = _slice_problem(directory, slice_state(state, index, count))
        if problem:
            problems.append(f"slice {index} {problem}")
        else:
            slices.append(_Slice(index, directory, info))
    if problems:
        raise IncompleteSlicesError(
            f"cannot merge {out}: {len(problems)} of {count} slices not ready: " + "; ".join(problems) + ". Run each "
            f"with the same arguments and --num-slices {count} --slice-index I (slurm/prepare_data.sh re-runs them "
            "all, keeping the finished ones), then merge again"
        )
    return slices


def _slice_problem(directory: Path, state: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(what is wrong with the slice in `directory`, or None; its slice.json)."""
    if not (directory / SLICE_INFO).is_file():
        return (
            "is missing"
            if not directory.exists()
            else f"is unfinished (no {SLICE_INFO} in {directory}: interrupted, failed or still running)"
        ), {}
    info = json.loads((directory / SLICE_INFO).read_text(encoding="utf-8"))
    if info.get("state") != state:
        return (
            f"was made by another run ({', '.join(differences(info.get('state', {}), state))} differ): "
            "re-run it with --overwrite"
        ), info
    for entry in info["splits"].values():
        for shard in entry["shards"]:
            path = directory / shard["path"]
            if not path.is_file() or path.stat().st_size != shard["bytes"]:
                return f"is damaged ({path} is missing or truncated): delete {directory} and run it again", info
    return None, info


def _examples(infos: list[dict[str, Any]]) -> ReadStats:
    """The first few bad records, empty documents and invalid UTF-8 of slices (their slice.json), in order."""
    examples = ReadStats()
    for info in infos:
        examples.update(ReadStats.from_dict(info))  # slice.json: the examples, by kind, at its top level
    return examples


def _sum_statistics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The slices' read statistics added up (a skip reason appears when any slice has it)."""
    skipped: dict[str, int] = {}
    for stats in parts:
        for reason, n in stats["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    total = {key: sum(stats[key] for stats in parts) for key in ("documents_read", "documents_written", "invalid_utf8")}
    return total | {"skipped": skipped}


def merge_jobs(split: str, slices: list[_Slice], docs_per_shard: int) -> list[MergeJob]:
    """The merge of `split` as one job per merged shard: position n over all slices (slice I's local position plus
    the positions of the slices before it, documents without tokens counted) goes to shard n // K, position n % K,
    as in a single run; every shard up to the last position is written (an all-`no_tokens` one too, empty)."""
    spans, base = [], 0  # each slice's positions [base, base + n) over all slices
    for s in slices:
        spans.append((s, base, s.info["positions"][split]))
        base += s.info["positions"][split]
    jobs = []
    for shard in range(-(-base // docs_per_shard)):
        low, high = shard * docs_per_shard, min(base, (shard + 1) * docs_per_shard)
        runs = tuple(
            SliceRun(str(s.directory), s.info["splits"][split], max(low, first) - first,
                     min(high, first + n) - first, first)
            for s, first, n in spans
            if first < high and low < first + n
        )  # fmt: skip
        jobs.append(MergeJob(split, shard, runs, high - low))
    return jobs
