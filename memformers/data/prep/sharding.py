"""`shard_documents`: a corpus → a SHARD_DIR (format/manifest.py), in one run or in slices merged at the end.

Single run: the pipeline (pipeline.py) has workers read, tokenize and segment the inputs into shards (writer.py),
then writes each split's index.npy and `manifest.json`, and removes `.progress/`. Each shard is written to
`shard-NNNNNN.tar.tmp`, renamed when complete and recorded in `SHARD_DIR/.progress/`; re-running the same command
after an interruption (even `kill -9`) keeps every shard recorded (checked by sha256), skips the inputs whose
documents all went to them, and writes the rest. Re-running a finished command does nothing; different settings or
inputs for an existing SHARD_DIR are refused unless `overwrite=True` (output.py).

Sliced run (`num_slices`, `slice_index`, `merge`; one Slurm array task per slice, see slurm/prepare_data.sh):
slices.py. Each slice runs the same pipeline over its part of the inputs into `SHARD_DIR/.slices/slice-IIIII/`,
and the merge re-numbers their samples into the layout above, byte-identical to a single-process run.
"""

from __future__ import annotations

import os
import shutil
import time

from .output import OWNED, PROGRESS_DIR, discarded_on_bad_input, prepare_output
from .pipeline import check_written, make_job, read_statistics, tokenize_into, whole_inputs, write_manifest
from .slices import run_sliced
from .summary import ShardingSummary


def shard_documents(
    inputs: list[str],
    tokenizer: str | os.PathLike,
    output: str | os.PathLike,
    segment_length: int,
    *,
    workers: int | None = None,
    val_fraction: float = 0.01,
    text_field: str = "text",
    id_field: str | None = "id",
    docs_per_shard: int = 1000,
    skip_bad_records: bool = False,
    overwrite: bool = False,
    dataset_split: str = "train",
    dataset_config: str | None = None,
    progress: bool = True,
    block_bytes: int | None = None,
    num_slices: int | None = None,
    slice_index: int | None = None,
    merge: bool = False,
) -> ShardingSummary:
    """Tokenize, segment and shard `inputs` into the SHARD_DIR `output` (see the module docstring).

    `workers` worker processes (default: the CPUs this process may use; 0: all in this process); `block_bytes`:
    input bytes per unit of work (default: about 4 per worker, 1 to 64 MiB; the output does not depend on it). With
    `num_slices`
    N, either `slice_index` I (0-based) tokenizes only slice I into `output/.slices/`, or `merge=True`
    merges the N finished slices into the same SHARD_DIR this function writes without them (slices.py;
    IncompleteSlicesError when slices are missing). Returns the summary; raises DataError
    (BadRecordError, TokenizerError, ...) on bad input or settings.
    """
    started = time.perf_counter()
    options = dict(
        workers=workers, val_fraction=val_fraction, text_field=text_field, id_field=id_field,
        docs_per_shard=docs_per_shard, skip_bad_records=skip_bad_records, dataset_split=dataset_split,
        dataset_config=dataset_config, progress=progress, block_bytes=block_bytes,
    )  # fmt: skip
    if num_slices is not None or slice_index is not None or merge:
        return run_sliced(inputs, tokenizer, output, segment_length, options, num_slices, slice_index, merge, overwrite)
    job = make_job(inputs, tokenizer, output, segment_length, options)
    existed = job.out.exists()
    status = prepare_output(job.out, job.state, overwrite)
    if status == "complete":
        return ShardingSummary.of_finished(job.out, seconds=time.perf_counter() - started, workers=job.workers)
    with discarded_on_bad_input(job.out, OWNED, status == "fresh", existed):
        result = tokenize_into(job, job.out, job.state, whole_inputs(job), "sharding")
        stats = read_statistics(result.stats, result.records)
        check_written(stats, result.stats.bad_record_examples)
    manifest = write_manifest(job, result.tokenizer, result.records, stats)
    shutil.rmtree(job.out / PROGRESS_DIR)
    return ShardingSummary.from_record(
        manifest,
        job.out,
        seconds=time.perf_counter() - started,
        workers=job.workers,
        shards_written=len(result.records) - result.reused,
        tokens_this_run=result.tokens,
        ignored_files=job.reader.stats.ignored_files,
        examples=result.stats,
    )
