"""The single-process sharding pipeline: documents → token ids → segments → shards of one output folder.

The main process reads documents in input order (sources.py), assigns each to a split by a stable hash of its
text (blake2b-64 of the UTF-8 bytes / 2**64 < val_fraction → val; the same text always lands on the same side)
and to a shard position by its rank within the split (shard = n // K, position = n % K for the n-th document of
the split, K = docs_per_shard), and sends chunks of texts to worker processes, which tokenize with the fast
tokenizer (single-threaded each, special tokens in the text read as plain text) and segment (segmenting.py).
Results come back in order and the main process encodes them as tar samples (format/samples.py) into the shards
(writer.py), so the shards are byte-identical whatever the number of workers.

`tokenize_into` runs it into a SHARD_DIR or a slice's folder, resuming from the shards recorded in `.progress/`;
`write_manifest` finishes a SHARD_DIR. The entry point, `shard_documents`, is in sharding.py.

Accounting: documents_read = documents_written + sum(skipped by reason), reasons being `empty`,
`bad_record` (sources.py) and `no_tokens` (text the tokenizer maps to no token at all).
"""

from __future__ import annotations

import collections
import hashlib
import multiprocessing
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memformers.files import write_json_atomic

from ..errors import DataError
from ..format.manifest import FORMAT, FORMAT_VERSION, INDEX_DTYPE, MANIFEST_NAME, TOKENIZER_SUBDIR
from ..format.samples import encode_sample, sample_key
from ..tokenizer import load_tokenizer, sentence_end_table, token_dtype, tokenizer_identity, tokenizer_sha256
from .output import PROGRESS_DIR
from .segmenting import segment_ends
from .sources import Document, DocumentReader, ReadStats
from .writer import ShardWriter, finish_split, load_progress

SPLIT_RULE = "blake2b-64(utf-8 text) / 2**64 < val_fraction -> val"


def split_of(utf8: bytes, val_fraction: float) -> str:
    """'val' or 'train' for a document's UTF-8 text: a stable hash, independent of order and run."""
    value = int.from_bytes(hashlib.blake2b(utf8, digest_size=8).digest(), "little")
    return "val" if value < val_fraction * 2.0**64 else "train"


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


class _Pipeline:
    """Chunks of documents to the worker processes and their results, in input order, into shards.

    At most 2 * workers + 1 chunks are in flight, so reading never runs far ahead of writing. A shard
    is committed when the result for its last position arrives; `flush()` waits for everything and
    commits the last, partial shard of each split. Leaving the `with` block stops the workers.
    """

    def __init__(
        self,
        out: Path,
        docs_per_shard: int,
        workers: int,
        init_args: tuple,
        records: dict,
        progress: bool,
        chunk_chars: int,
    ) -> None:
        """`init_args`: `_init_worker`'s (tokenizer JSON, sentence-end table, segment length, token dtype)."""
        self.out, self.docs_per_shard, self.workers, self.records = out, docs_per_shard, workers, records
        self.chunk_chars = chunk_chars
        self.token_dtype = np.dtype(init_args[3])  # what the workers pack ids in
        self.writers: dict[str, ShardWriter] = {}
        self.pending: collections.deque = collections.deque()
        self.chunk: list[str] = []
        self.slots: list[tuple[str, int, int, dict[str, Any]]] = []
        self.size = 0
        self.tokens = 0
        self.pool = None
        if workers > 0:  # the children inherit the variable: one thread each, no tokenizers fork warning
            context = multiprocessing.get_context(
                "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            )
            with _environment(TOKENIZERS_PARALLELISM="false"):
                self.pool = context.Pool(workers, initializer=_init_worker, initargs=init_args)
        else:
            _init_worker(*init_args)
        self.bar = _progress_bar(progress)

    def __enter__(self) -> _Pipeline:
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
            result = (
                self.pool.apply_async(_encode_chunk, (self.chunk,)) if self.pool else _Done(_encode_chunk(self.chunk))
            )
            self.pending.append((result, self.slots))
        self.chunk, self.slots, self.size = [], [], 0
        while len(self.pending) > 2 * self.workers + 1:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        result, slots = self.pending.popleft()
        for (split, shard, pos, meta), encoded in zip(slots, result.get()):
            writer = self.writers.get(split)
            if writer is None:
                writer = self.writers[split] = ShardWriter(self.out, split, shard)
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


def make_job(
    inputs: list[str],
    tokenizer: str | os.PathLike,
    output: str | os.PathLike,
    segment_length: int,
    options: dict[str, Any],
) -> Job:
    """Check the arguments, resolve the inputs, load the tokenizer; the run's settings and state."""
    o = options
    workers = (os.cpu_count() or 1) if o["workers"] is None else o["workers"]
    _check_numbers(segment_length, o["docs_per_shard"], o["val_fraction"], workers)
    reader = DocumentReader(
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
        "format_version": FORMAT_VERSION,  # the sentence-end rule that cuts segments changed with it
        "text_field": o["text_field"],
        "id_field": o["id_field"],
        "skip_bad_records": o["skip_bad_records"],
        "dataset_split": o["dataset_split"],
        "dataset_config": o["dataset_config"],
        "tokenizer_sha256": tokenizer_sha256(source_tokenizer),
    }
    state = {"settings": settings, "inputs": reader.fingerprint()}
    return Job(
        Path(output),
        os.fspath(tokenizer),
        source_tokenizer,
        reader,
        settings,
        state,
        workers,
        o["progress"],
        o["chunk_chars"],
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
    done = load_progress(out)
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


def _progress_bar(enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(desc="sharding", unit=" docs", disable=not enabled, smoothing=0.1, mininterval=0.5)
