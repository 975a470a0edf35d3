"""Sharding a corpus: documents → token ids → segments → webdataset shards + manifest (manifest.py).

Pipeline: the main process reads documents in input order (sources.py), assigns each to a split by a
stable hash of its text (blake2b-64 of the UTF-8 bytes / 2**64 < val_fraction → val; the same text
always lands on the same side) and to a shard position by its rank within the split (shard = n // K,
position = n % K for the n-th document of the split, K = docs_per_shard), and sends chunks of texts
to worker processes, which tokenize with the fast tokenizer (single-threaded each, special tokens in
the text read as plain text) and segment (segmenting.py). Results come back in order and the main
process encodes them as tar samples (shardio.py) into the shards, so the shards are byte-identical
whatever the number of workers.

Each shard is written to `shard-NNNNNN.tar.tmp`, renamed when complete and recorded in
`SHARD_DIR/.progress/`; re-running the same command after an interruption re-reads the input but only
tokenizes the documents of shards not yet recorded. The last step writes each split's `index.npy` and
`manifest.json`, then removes `.progress/`. Re-running a finished command does nothing; different
settings or inputs for an existing SHARD_DIR are refused unless `overwrite=True`.

Sharding in slices (`num_slices`, `slice_index`, `merge`; one Slurm array task per slice, see
slurm/prepare_data.sh) is in merge.py: each slice runs the same pipeline (`tokenize_into`) over its part of
the inputs into `SHARD_DIR/.slices/slice-IIIII/`, and the merge re-numbers their samples into the layout
above, byte-identical to a single-process run.

Accounting: documents_read = documents_written + sum(skipped by reason), reasons being `empty`,
`bad_record` (sources.py) and `no_tokens` (text the tokenizer maps to no token at all).
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import struct
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .errors import DataError
from .manifest import (
    FORMAT,
    FORMAT_VERSION,
    INDEX_DTYPE,
    MANIFEST_NAME,
    TOKENIZER_SUBDIR,
    read_manifest,
    write_json_atomic,
)
from .segmenting import segment_ends
from .shardio import encode_sample, file_sha256, sample_key, tar_trailer
from .sources import Document, DocumentReader, ReadStats
from .tokenizer import load_tokenizer, sentence_end_table, token_dtype, tokenizer_identity, tokenizer_sha256

PROGRESS_DIR = ".progress"
SLICES_DIR = ".slices"  # the slices of a sliced run (merge.py), removed by its merge
SPLIT_RULE = "blake2b-64(utf-8 text) / 2**64 < val_fraction -> val"
_OWNED = (MANIFEST_NAME, TOKENIZER_SUBDIR, "train", "val", PROGRESS_DIR, SLICES_DIR)


def split_of(utf8: bytes, val_fraction: float) -> str:
    """'val' or 'train' for a document's UTF-8 text: a stable hash, independent of order and run."""
    value = int.from_bytes(hashlib.blake2b(utf8, digest_size=8).digest(), "little")
    return "val" if value < val_fraction * 2.0**64 else "train"


def shard_name(split: str, shard: int) -> str:
    """Path of a shard relative to the SHARD_DIR."""
    return f"{split}/shard-{shard:06d}.tar"


@dataclass
class ShardingSummary:
    """What a sharding run read, wrote and skipped; `format()` renders it for the terminal."""

    output: str
    documents_read: int
    documents_written: int
    skipped: dict[str, int]
    invalid_utf8: int
    splits: dict[str, dict[str, int]]
    shards_written: int
    shards_reused: int
    tokens_this_run: int
    seconds: float
    workers: int
    already_complete: bool = False
    label: str = "shard directory"  # what `output` is: the SHARD_DIR, or a slice of one
    ignored_files: list[str] = field(default_factory=list)
    bad_record_examples: list[str] = field(default_factory=list)

    @property
    def reconciles(self) -> bool:
        """documents read = documents written + documents skipped."""
        return self.documents_read == self.documents_written + sum(self.skipped.values())

    @property
    def tokens_per_second(self) -> float:
        """Tokens tokenized and written by this run per second of wall time."""
        return self.tokens_this_run / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        lines = [f"{self.label}: {self.output}" + ("  (already complete: nothing to do)" if self.already_complete else "")]
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(self.skipped.items()) if v) or "none"
        lines += [
            f"  documents read     {self.documents_read:>14,}",
            f"  documents written  {self.documents_written:>14,}",
            f"  documents skipped  {skipped:>14,}   ({reasons})",
            f"  invalid UTF-8      {self.invalid_utf8:>14,}   documents written with U+FFFD replacements",
        ]
        for split, s in self.splits.items():
            lines.append(
                f"  {split:<6} {s['documents']:>11,} docs {s['segments']:>13,} segments {s['tokens']:>15,} tokens "
                f"in {s['shards']:,} shards"
            )
        lines.append(f"  shards written {self.shards_written:,}, reused from an earlier run {self.shards_reused:,}")
        if self.seconds > 0 and self.tokens_this_run:
            lines.append(
                f"  {self.tokens_this_run:,} tokens in {self.seconds:.1f} s = {self.tokens_per_second:,.0f} tokens/s "
                f"with {self.workers} worker(s)"
            )
        if self.ignored_files:
            lines.append(f"  ignored {len(self.ignored_files)} files of unsupported types, e.g. {self.ignored_files[0]}")
        for example in self.bad_record_examples:
            lines.append(f"  skipped bad record: {example}")
        lines.append("  reconciles: read = written + skipped" if self.reconciles else "  WARNING: counts do not reconcile")
        return "\n".join(lines)


# -- worker side ------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}
_PACK_LIMIT = 1 << 16


def _init_worker(tokenizer_json: str, is_end: np.ndarray, segment_length: int, dtype: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.encode_special_tokens = True  # "<s>" or "<mask>" in a document is text, not a special token
    _WORKER.update(tokenizer=tokenizer, is_end=is_end, segment_length=segment_length, dtype=np.dtype(dtype))


def _encode_chunk(texts: list[str]) -> list[tuple[bytes, bytes] | None]:
    """Tokenize and segment documents: the bytes of the token ids (worker dtype) and of the segment ends
    (little-endian uint32) of each, None if no tokens.

    Only these compact bytes travel back (bytes pickle as a copy; arrays would pickle through
    `__reduce__`); the writer (main process) wraps them as tar samples, which are mostly header and
    padding bytes, so encoding them here would also triple what goes through the pipe.
    """
    tokenizer, dtype = _WORKER["tokenizer"], _WORKER["dtype"]
    results: list[tuple[bytes, bytes] | None] = []
    for encoding in tokenizer.encode_batch_fast(texts, add_special_tokens=False):
        token_ids = encoding.ids
        if not token_ids:
            results.append(None)
            continue
        if len(token_ids) <= _PACK_LIMIT:  # struct packs a list about twice as fast as np.array converts it
            ids = struct.pack(f"<{len(token_ids)}{dtype.char}", *token_ids)
        else:
            ids = np.array(token_ids, dtype=dtype).tobytes()
        ends = segment_ends(np.frombuffer(ids, dtype=dtype), _WORKER["is_end"], _WORKER["segment_length"])
        results.append((ids, ends.astype("<u4", copy=False).tobytes()))
    return results


class _Done:
    """A finished result with the interface of multiprocessing's AsyncResult (for workers=0)."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def get(self) -> Any:
        return self._value


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- main side ---------------------------------------------------------------------------------------


class _ShardWriter:
    """Writes one shard to a temporary file; `commit()` renames it and records it in .progress/."""

    def __init__(self, out: Path, split: str, shard: int) -> None:
        self.out, self.split, self.shard = out, split, shard
        self.path = out / shard_name(split, shard)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.file = open(self.tmp, "wb", buffering=1 << 20)
        self.sha = hashlib.sha256()
        self.size = 0
        self.rows: list[tuple[int, int, int, int, int, int]] = []
        self.segments = self.tokens = self.no_tokens = 0

    def add(self, sample: bytes, tokens: int, segments: int, crc: int) -> None:
        self.rows.append((self.shard, self.size, len(sample), tokens, segments, crc))
        self._write(sample)
        self.tokens += tokens
        self.segments += segments

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha.update(data)
        self.size += len(data)

    def commit(self) -> dict[str, Any]:
        self._write(tar_trailer(self.size))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        record = {
            "path": shard_name(self.split, self.shard),
            "documents": len(self.rows),
            "segments": self.segments,
            "tokens": self.tokens,
            "bytes": self.size,
            "sha256": self.sha.hexdigest(),
            "no_tokens": self.no_tokens,
        }
        base = self.out / PROGRESS_DIR / f"{self.split}-{self.shard:06d}"
        np.save(base.with_suffix(".npy"), np.array(self.rows, dtype=INDEX_DTYPE))
        write_json_atomic(base.with_suffix(".json"), record)  # written last: marks the shard done
        return record

    def abandon(self) -> None:
        self.file.close()


class _Pipeline:
    """Chunks of documents to the worker processes and their results, in input order, into shards.

    At most 2 * workers + 1 chunks are in flight, so reading never runs far ahead of writing. A shard
    is committed when the result for its last position arrives; `flush()` waits for everything and
    commits the last, partial shard of each split. Leaving the `with` block stops the workers.
    """

    def __init__(self, out: Path, docs_per_shard: int, workers: int, init_args: tuple, records: dict, progress: bool, chunk_chars: int) -> None:
        """`init_args`: `_init_worker`'s (tokenizer JSON, sentence-end table, segment length, token dtype)."""
        self.out, self.docs_per_shard, self.workers, self.records = out, docs_per_shard, workers, records
        self.chunk_chars = chunk_chars
        self.token_dtype = np.dtype(init_args[3])  # what the workers pack ids in
        self.writers: dict[str, _ShardWriter] = {}
        self.pending: collections.deque = collections.deque()
        self.chunk: list[str] = []
        self.slots: list[tuple[str, int, int, dict[str, Any]]] = []
        self.size = 0
        self.tokens = 0
        self.pool = None
        if workers > 0:  # the children inherit the variable: one thread each, no tokenizers fork warning
            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            with _environment(TOKENIZERS_PARALLELISM="false"):
                self.pool = context.Pool(workers, initializer=_init_worker, initargs=init_args)
        else:
            _init_worker(*init_args)
        self.bar = _progress_bar(progress)

    def __enter__(self) -> "_Pipeline":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.bar.close()
        for writer in self.writers.values():
            writer.abandon()
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def add(self, split: str, shard: int, pos: int, doc: Document) -> None:
        """Queue a document for (split, shard, position)."""
        self.chunk.append(doc.text)
        self.slots.append((split, shard, pos, {"id": doc.doc_id, "source": doc.source}))
        self.size += len(doc.utf8)
        if self.size >= self.chunk_chars:
            self._submit()

    def flush(self) -> None:
        """Wait for all results and commit every open shard."""
        self._submit()
        while self.pending:
            self._finish_oldest()
        for split in list(self.writers):
            self._commit(split)

    def _submit(self) -> None:
        if self.chunk:
            result = self.pool.apply_async(_encode_chunk, (self.chunk,)) if self.pool else _Done(_encode_chunk(self.chunk))
            self.pending.append((result, self.slots))
        self.chunk, self.slots, self.size = [], [], 0
        while len(self.pending) > 2 * self.workers + 1:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        result, slots = self.pending.popleft()
        for (split, shard, pos, meta), encoded in zip(slots, result.get()):
            writer = self.writers.get(split)
            if writer is None:
                writer = self.writers[split] = _ShardWriter(self.out, split, shard)
            if encoded is None:
                writer.no_tokens += 1
            else:
                ids, ends = np.frombuffer(encoded[0], dtype=self.token_dtype), np.frombuffer(encoded[1], dtype="<u4")
                sample = encode_sample(sample_key(split, shard, pos), ids, ends, meta)
                writer.add(sample, int(ids.size), int(ends.size), zlib.crc32(sample))
                self.tokens += int(ids.size)
            if pos == self.docs_per_shard - 1:
                self._commit(split)
        self.bar.update(len(slots))

    def _commit(self, split: str) -> None:
        writer = self.writers.pop(split)
        self.records[(split, writer.shard)] = (writer.commit(), np.array(writer.rows, dtype=INDEX_DTYPE))


def _load_progress(out: Path) -> dict[tuple[str, int], tuple[dict[str, Any], np.ndarray]]:
    """Shards recorded as done whose files are intact: (split, shard) → (record, index rows)."""
    done = {}
    for path in sorted((out / PROGRESS_DIR).glob("*.json")):
        if path.name == "state.json":
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        split, shard = path.stem.rsplit("-", 1)
        tar = out / record["path"]
        rows_path = path.with_suffix(".npy")
        if (
            tar.is_file()
            and rows_path.is_file()
            and tar.stat().st_size == record["bytes"]
            and file_sha256(tar) == record["sha256"]
        ):
            done[(split, int(shard))] = (record, np.load(rows_path, allow_pickle=False))
    return done


def _entries(out: Path) -> set[str]:
    """What the output folder holds; DataError when it is a file or holds anything a SHARD_DIR does not."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder")
    entries = set(os.listdir(out)) if out.is_dir() else set()
    if entries - set(_OWNED):
        raise DataError(
            f"output folder {out} is not empty and not a shard directory (it holds "
            f"{sorted(entries - set(_OWNED))[:5]}): choose a new or empty folder"
        )
    return entries


def differences(previous: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """What differs between two run states ({"settings", "inputs"[, "slices"]}), for error messages."""
    found = [k for k in sorted(state["settings"]) if previous.get("settings", {}).get(k) != state["settings"][k]]
    if previous.get("inputs") != state["inputs"]:
        found.append("inputs (files, sizes or modification times)")
    if previous.get("slices", {}).get("count") != state.get("slices", {}).get("count"):
        found.append("--num-slices")
    return found


def refusal(out: Path, what: str, previous: dict[str, Any], state: dict[str, Any]) -> DataError:
    """The error for an existing run in `out` made with other settings or inputs than this one."""
    return DataError(
        f"{out} holds {what} made with different settings ({', '.join(differences(previous, state))}): re-run "
        "with the same arguments to finish or keep it, write to a new folder, or pass --overwrite to replace it"
    )


def finished_state(out: Path, entries: set[str]) -> dict[str, Any] | None:
    """The settings and inputs of the finished shard set in `out`, None when there is none."""
    if MANIFEST_NAME not in entries:
        return None
    manifest = read_manifest(out)
    return {"settings": manifest.get("settings"), "inputs": manifest.get("inputs")}


def remove_entries(out: Path, names: tuple[str, ...]) -> None:
    """Delete `out/name` (file or folder) for each name that exists."""
    for name in names:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _prepare_output(out: Path, state: dict[str, Any], overwrite: bool) -> str:
    """Check what `out` holds; returns 'fresh', 'resume' or 'complete'. Raises DataError when refused."""
    entries = _entries(out)
    previous = finished_state(out, entries)
    if previous is not None:
        status = "complete"
    elif (out / PROGRESS_DIR / "state.json").is_file():
        previous, status = json.loads((out / PROGRESS_DIR / "state.json").read_text(encoding="utf-8")), "resume"
    elif entries - {SLICES_DIR}:
        status = "stale"  # leftovers without any record: start over
    else:
        status = "fresh"
    if previous is not None and previous != state:
        if not overwrite:
            raise refusal(out, "a finished shard set" if status == "complete" else "an unfinished run", previous, state)
        status = "stale"
    if status != "complete" and SLICES_DIR in entries and not overwrite:
        raise DataError(
            f"{out} holds the slices of an unfinished sliced run ({SLICES_DIR}/): finish it with the same arguments "
            "and --num-slices N --merge (or slurm/prepare_data.sh), or pass --overwrite to discard them"
        )
    if status == "stale" or (overwrite and status == "complete"):
        remove_entries(out, _OWNED)
        status = "fresh"
    elif overwrite:
        remove_entries(out, (SLICES_DIR,))
    return status


@dataclass
class Job:
    """The checked arguments of a sharding run, shared by the single-process run, the slices and the merge.

    `state` (settings + inputs fingerprint) is what a resumed or merged run must match.
    """

    out: Path
    tokenizer_name: str
    source_tokenizer: Any
    reader: DocumentReader
    settings: dict[str, Any]
    state: dict[str, Any]
    workers: int
    progress: bool
    chunk_chars: int

    @property
    def splits(self) -> list[str]:
        return ["train", "val"] if self.settings["val_fraction"] > 0 else ["train"]


def _check_numbers(segment_length: int, docs_per_shard: int, val_fraction: float, workers: int) -> None:
    if segment_length < 1:
        raise DataError(f"--segment-length must be >= 1, got {segment_length}")
    if docs_per_shard < 1:
        raise DataError(f"--docs-per-shard must be >= 1, got {docs_per_shard}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if workers < 0:
        raise DataError(f"--workers must be >= 0, got {workers}")


def _make_job(
    inputs: list[str],
    tokenizer: str | os.PathLike,
    output: str | os.PathLike,
    segment_length: int,
    options: dict[str, Any],
    reader_class: type[DocumentReader] = DocumentReader,
) -> Job:
    """Check the arguments, resolve the inputs, load the tokenizer; the run's settings and state."""
    o = options
    workers = (os.cpu_count() or 1) if o["workers"] is None else o["workers"]
    _check_numbers(segment_length, o["docs_per_shard"], o["val_fraction"], workers)
    reader = reader_class(
        list(inputs),
        text_field=o["text_field"],
        id_field=o["id_field"],
        skip_bad_records=o["skip_bad_records"],
        dataset_split=o["dataset_split"],
        dataset_config=o["dataset_config"],
    )
    source_tokenizer = load_tokenizer(tokenizer)
    settings = {
        "segment_length": segment_length,
        "docs_per_shard": o["docs_per_shard"],
        "val_fraction": o["val_fraction"],
        "split_rule": SPLIT_RULE,
        "text_field": o["text_field"],
        "id_field": o["id_field"],
        "skip_bad_records": o["skip_bad_records"],
        "dataset_split": o["dataset_split"],
        "dataset_config": o["dataset_config"],
        "tokenizer_sha256": tokenizer_sha256(source_tokenizer),
    }
    state = {"settings": settings, "inputs": reader.fingerprint()}
    return Job(
        Path(output), os.fspath(tokenizer), source_tokenizer, reader, settings, state, workers, o["progress"], o["chunk_chars"]
    )


def copy_tokenizer(job: Job, out: Path) -> Any:
    """Save the tokenizer into `out/tokenizer/` and load that copy (what tokenizes, what the manifest names)."""
    tok_dir = out / TOKENIZER_SUBDIR
    job.source_tokenizer.save_pretrained(str(tok_dir))
    return load_tokenizer(tok_dir)


@dataclass
class Tokenized:
    """What `tokenize_into` wrote: shard records (with the reused ones), positions taken per split, tokens."""

    records: dict[tuple[str, int], tuple[dict[str, Any], np.ndarray]]
    reused: int
    positions: dict[str, int]
    tokens: int
    tokenizer: Any


def tokenize_into(job: Job, out: Path, state: dict[str, Any], documents: Iterable[Document]) -> Tokenized:
    """Tokenize `documents` into the shards of `out` (created or resumed), recording progress in out/.progress/.

    Document n of a split (counting those without tokens) goes to shard n // K, position n % K.
    """
    for split in job.splits:
        (out / split).mkdir(parents=True, exist_ok=True)
    (out / PROGRESS_DIR).mkdir(exist_ok=True)
    write_json_atomic(out / PROGRESS_DIR / "state.json", state)
    tok = copy_tokenizer(job, out)  # the copy tokenizes, so the SHARD_DIR holds what made its shards
    done = _load_progress(out)
    stale = {p for split in job.splits for p in (out / split).glob("*.tar")}
    stale -= {out / rec["path"] for rec, _ in done.values()}
    for path in [*stale, *(p for split in job.splits for p in (out / split).glob("*.tmp"))]:
        path.unlink()

    records: dict[tuple[str, int], tuple[dict[str, Any], np.ndarray]] = dict(done)
    counters: collections.Counter = collections.Counter()
    docs_per_shard, val_fraction = job.settings["docs_per_shard"], job.settings["val_fraction"]
    tok_json, dtype = tok.backend_tokenizer.to_str(), token_dtype(len(tok)).str
    init_args = (tok_json, sentence_end_table(tok), job.settings["segment_length"], dtype)
    with _Pipeline(out, docs_per_shard, job.workers, init_args, records, job.progress, job.chunk_chars) as pipeline:
        for doc in documents:
            split = split_of(doc.utf8, val_fraction)
            shard, pos = divmod(counters[split], docs_per_shard)
            counters[split] += 1
            if (split, shard) in done:
                pipeline.bar.update(1)
            else:
                pipeline.add(split, shard, pos, doc)
        pipeline.flush()
    positions = {split: counters[split] for split in job.splits}
    return Tokenized(records, len(done), positions, pipeline.tokens, tok)


def read_statistics(stats: ReadStats, records: dict) -> dict[str, Any]:
    """The manifest's `stats`: documents read, written, skipped by reason (no_tokens from the shards), invalid UTF-8."""
    skipped = dict(stats.skipped)
    skipped["no_tokens"] = sum(rec["no_tokens"] for rec, _ in records.values())
    return {
        "documents_read": stats.documents_read,
        "documents_written": sum(rec["documents"] for rec, _ in records.values()),
        "skipped": skipped,
        "invalid_utf8": stats.invalid_utf8,
    }


def check_written(stats: dict[str, Any], examples: list[str]) -> None:
    """DataError when no document at all was written."""
    if stats["documents_written"] == 0:
        raise DataError(
            f"no documents written: all {stats['documents_read']:,} documents read were skipped ({stats['skipped']})"
            + (f"; e.g. {examples[0]}" if examples else "")
        )


def write_manifest(job: Job, tok: Any, records: dict, stats: dict[str, Any]) -> dict[str, Any]:
    """Write each split's index.npy and the SHARD_DIR's manifest.json (last); the manifest."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "segment_length": job.settings["segment_length"],
        "token_dtype": token_dtype(len(tok)).name,
        "tokenizer": {"path": TOKENIZER_SUBDIR, **tokenizer_identity(tok, name=job.tokenizer_name)},
        "settings": job.settings,
        "inputs": job.state["inputs"],
        "splits": {split: finish_split(job.out, split, records) for split in job.splits},
        "stats": stats,
    }
    write_json_atomic(job.out / MANIFEST_NAME, manifest)
    return manifest


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
    chunk_chars: int = 1 << 20,
    num_slices: int | None = None,
    slice_index: int | None = None,
    merge: bool = False,
) -> ShardingSummary:
    """Tokenize, segment and shard `inputs` into the SHARD_DIR `output` (see the module docstring).

    `workers` tokenizer processes (default: the CPU count; 0 tokenizes in this process). With `num_slices`
    N, either `slice_index` I (0-based) tokenizes only slice I into `output/.slices/`, or `merge=True`
    merges the N finished slices into the same SHARD_DIR this function writes without them (merge.py;
    IncompleteSlicesError when slices are missing). Returns the summary; raises DataError
    (BadRecordError, TokenizerError, ...) on bad input or settings.
    """
    started = time.perf_counter()
    options = dict(
        workers=workers, val_fraction=val_fraction, text_field=text_field, id_field=id_field,
        docs_per_shard=docs_per_shard, skip_bad_records=skip_bad_records, dataset_split=dataset_split,
        dataset_config=dataset_config, progress=progress, chunk_chars=chunk_chars,
    )  # fmt: skip
    if num_slices is not None or slice_index is not None or merge:
        from .merge import run_sliced

        return run_sliced(inputs, tokenizer, output, segment_length, options, num_slices, slice_index, merge, overwrite)
    job = _make_job(inputs, tokenizer, output, segment_length, options)
    if _prepare_output(job.out, job.state, overwrite) == "complete":
        return summary_from_manifest(job.out, time.perf_counter() - started, job.workers)
    result = tokenize_into(job, job.out, job.state, job.reader)
    stats = read_statistics(job.reader.stats, result.records)
    check_written(stats, job.reader.stats.bad_record_examples)
    manifest = write_manifest(job, result.tokenizer, result.records, stats)
    shutil.rmtree(job.out / PROGRESS_DIR)
    return ShardingSummary(
        output=str(job.out),
        documents_read=stats["documents_read"],
        documents_written=stats["documents_written"],
        skipped=stats["skipped"],
        invalid_utf8=stats["invalid_utf8"],
        splits=split_totals(manifest["splits"]),
        shards_written=len(result.records) - result.reused,
        shards_reused=result.reused,
        tokens_this_run=result.tokens,
        seconds=time.perf_counter() - started,
        workers=job.workers,
        ignored_files=job.reader.stats.ignored_files,
        bad_record_examples=job.reader.stats.bad_record_examples,
    )


def finish_split(out: Path, split: str, records: dict) -> dict[str, Any]:
    """Write the split's index.npy; its manifest entry."""
    shards = sorted((shard, rec, rows) for (s, shard), (rec, rows) in records.items() if s == split)
    index = np.concatenate([rows for _, _, rows in shards]) if shards else np.zeros(0, dtype=INDEX_DTYPE)
    buffer = io.BytesIO()
    np.save(buffer, index.astype(INDEX_DTYPE), allow_pickle=False)
    data = buffer.getvalue()
    (out / split / "index.npy").write_bytes(data)
    entries = [{k: v for k, v in rec.items() if k != "no_tokens"} for _, rec, _ in shards]
    return {
        "documents": int(index.size),
        "segments": int(index["num_segments"].sum()),
        "tokens": int(index["num_tokens"].sum()),
        "index": {"path": f"{split}/index.npy", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
        "shards": entries,
    }


def split_totals(splits: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Documents, segments, tokens and shards of each split of a manifest's `splits`."""
    return {
        split: {k: entry[k] for k in ("documents", "segments", "tokens")} | {"shards": len(entry["shards"])}
        for split, entry in splits.items()
    }


def summary_of(record: dict[str, Any], output: Path, seconds: float, workers: int, *, label: str,
               already_complete: bool, **extra: Any) -> ShardingSummary:
    """The summary of finished work from its record (a manifest, or a slice's slice.json): nothing written now."""
    stats = record["stats"]
    return ShardingSummary(
        output=str(output),
        documents_read=stats["documents_read"],
        documents_written=stats["documents_written"],
        skipped=stats["skipped"],
        invalid_utf8=stats["invalid_utf8"],
        splits=split_totals(record["splits"]),
        shards_written=0,
        shards_reused=sum(len(e["shards"]) for e in record["splits"].values()),
        tokens_this_run=0,
        seconds=seconds,
        workers=workers,
        already_complete=already_complete,
        label=label,
        **extra,
    )


def summary_from_manifest(out: Path, seconds: float, workers: int, label: str = "shard directory") -> ShardingSummary:
    """The summary of a finished SHARD_DIR that a run found complete (nothing to do)."""
    return summary_of(read_manifest(out), out, seconds, workers, label=label, already_complete=True)


def _progress_bar(enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(desc="sharding", unit=" docs", disable=not enabled, smoothing=0.1, mininterval=0.5)
