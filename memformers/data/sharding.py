"""Sharding a corpus: documents → token ids → segments → webdataset shards + manifest (manifest.py).

Pipeline: the main process reads documents in input order (sources.py), assigns each to a split by a
stable hash of its text (blake2b-64 of the UTF-8 bytes / 2**64 < val_fraction → val; the same text
always lands on the same side) and to a shard position by its rank within the split (shard = n // K,
position = n % K for the n-th document of the split, K = docs_per_shard), and sends chunks of
documents to worker processes, which tokenize with the fast tokenizer (single-threaded each, special
tokens in the text read as plain text), segment (segmenting.py) and encode the samples (shardio.py).
Results come back in order, so the shards are byte-identical whatever the number of workers.

Each shard is written to `shard-NNNNNN.tar.tmp`, renamed when complete and recorded in
`SHARD_DIR/.progress/`; re-running the same command after an interruption re-reads the input but only
tokenizes the documents of shards not yet recorded. The last step writes each split's `index.npy` and
`manifest.json`, then removes `.progress/`. Re-running a finished command does nothing; different
settings or inputs for an existing SHARD_DIR are refused unless `overwrite=True`.

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
from typing import Any, Iterator

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
from .shardio import encode_sample, file_sha256, tar_trailer
from .sources import Document, DocumentReader
from .tokenizer import load_tokenizer, sentence_end_table, token_dtype, tokenizer_identity, tokenizer_sha256

PROGRESS_DIR = ".progress"
SPLIT_RULE = "blake2b-64(utf-8 text) / 2**64 < val_fraction -> val"
_OWNED = (MANIFEST_NAME, TOKENIZER_SUBDIR, "train", "val", PROGRESS_DIR)


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
        lines = [f"shard directory: {self.output}" + ("  (already complete: nothing to do)" if self.already_complete else "")]
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


def _encode_chunk(items: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[bytes, int, int, int] | None]:
    """Tokenize, segment and encode documents: (sample bytes, tokens, segments, crc32), None if no tokens."""
    tokenizer, dtype = _WORKER["tokenizer"], _WORKER["dtype"]
    encodings = tokenizer.encode_batch_fast([text for _, text, _ in items], add_special_tokens=False)
    results: list[tuple[bytes, int, int, int] | None] = []
    for (key, _, meta), encoding in zip(items, encodings):
        token_ids = encoding.ids
        if not token_ids:
            results.append(None)
            continue
        if len(token_ids) <= _PACK_LIMIT:  # struct packs a list about twice as fast as np.array converts it
            ids = np.frombuffer(struct.pack(f"<{len(token_ids)}{dtype.char}", *token_ids), dtype=dtype)
        else:
            ids = np.array(token_ids, dtype=dtype)
        ends = segment_ends(ids, _WORKER["is_end"], _WORKER["segment_length"])
        sample = encode_sample(key, ids, ends, meta)
        results.append((sample, int(ids.size), int(ends.size), zlib.crc32(sample)))
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
        self.out, self.docs_per_shard, self.workers, self.records = out, docs_per_shard, workers, records
        self.chunk_chars = chunk_chars
        self.writers: dict[str, _ShardWriter] = {}
        self.pending: collections.deque = collections.deque()
        self.chunk: list[tuple[str, str, dict[str, Any]]] = []
        self.slots: list[tuple[str, int, int]] = []
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
        self.chunk.append((f"{split}-{shard:06d}-{pos:06d}", doc.text, {"id": doc.doc_id, "source": doc.source}))
        self.slots.append((split, shard, pos))
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
        for (split, shard, pos), encoded in zip(slots, result.get()):
            writer = self.writers.get(split)
            if writer is None:
                writer = self.writers[split] = _ShardWriter(self.out, split, shard)
            if encoded is None:
                writer.no_tokens += 1
            else:
                writer.add(*encoded)
                self.tokens += encoded[1]
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


def _prepare_output(out: Path, state: dict[str, Any], overwrite: bool) -> str:
    """Check what `out` holds; returns 'fresh', 'resume' or 'complete'. Raises DataError when refused."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder")
    entries = set(os.listdir(out)) if out.is_dir() else set()
    if entries - set(_OWNED):
        raise DataError(
            f"output folder {out} is not empty and not a shard directory (it holds "
            f"{sorted(entries - set(_OWNED))[:5]}): choose a new or empty folder"
        )
    previous = None
    if MANIFEST_NAME in entries:
        manifest = read_manifest(out)
        previous, status = {"settings": manifest.get("settings"), "inputs": manifest.get("inputs")}, "complete"
    elif (out / PROGRESS_DIR / "state.json").is_file():
        previous, status = json.loads((out / PROGRESS_DIR / "state.json").read_text(encoding="utf-8")), "resume"
    elif entries:
        status = "stale"  # leftovers without any record: start over
    else:
        status = "fresh"
    if previous is not None and previous != state:
        if not overwrite:
            differences = [
                k for k in sorted(state["settings"]) if previous.get("settings", {}).get(k) != state["settings"][k]
            ]
            if previous.get("inputs") != state["inputs"]:
                differences.append("inputs (files, sizes or modification times)")
            what = "a finished shard set" if status == "complete" else "an unfinished run"
            raise DataError(
                f"{out} holds {what} made with different settings ({', '.join(differences)}): re-run with the "
                "same arguments to finish or keep it, write to a new folder, or pass --overwrite to replace it"
            )
        status = "stale"
    if status == "stale" or (overwrite and status == "complete"):
        for name in _OWNED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        status = "fresh"
    return status


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
) -> ShardingSummary:
    """Tokenize, segment and shard `inputs` into the SHARD_DIR `output` (see the module docstring).

    `workers` tokenizer processes (default: the CPU count; 0 tokenizes in this process). Returns the
    summary; raises DataError (BadRecordError, TokenizerError, ...) on bad input or settings.
    """
    started = time.perf_counter()
    if segment_length < 1:
        raise DataError(f"--segment-length must be >= 1, got {segment_length}")
    if docs_per_shard < 1:
        raise DataError(f"--docs-per-shard must be >= 1, got {docs_per_shard}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 0:
        raise DataError(f"--workers must be >= 0, got {workers}")
    out = Path(output)
    reader = DocumentReader(
        list(inputs),
        text_field=text_field,
        id_field=id_field,
        skip_bad_records=skip_bad_records,
        dataset_split=dataset_split,
        dataset_config=dataset_config,
    )
    source_tokenizer = load_tokenizer(tokenizer)
    settings = {
        "segment_length": segment_length,
        "docs_per_shard": docs_per_shard,
        "val_fraction": val_fraction,
        "split_rule": SPLIT_RULE,
        "text_field": text_field,
        "id_field": id_field,
        "skip_bad_records": skip_bad_records,
        "dataset_split": dataset_split,
        "dataset_config": dataset_config,
        "tokenizer_sha256": tokenizer_sha256(source_tokenizer),
    }
    state = {"settings": settings, "inputs": reader.fingerprint()}
    status = _prepare_output(out, state, overwrite)
    if status == "complete":
        return _summary_from_manifest(out, time.perf_counter() - started, workers)

    splits = ["train", "val"] if val_fraction > 0 else ["train"]
    for split in splits:
        (out / split).mkdir(parents=True, exist_ok=True)
    (out / PROGRESS_DIR).mkdir(exist_ok=True)
    write_json_atomic(out / PROGRESS_DIR / "state.json", state)
    tok_dir = out / TOKENIZER_SUBDIR
    source_tokenizer.save_pretrained(str(tok_dir))
    tok = load_tokenizer(tok_dir)  # the copy tokenizes, so the SHARD_DIR holds what made its shards
    identity = tokenizer_identity(tok, name=os.fspath(tokenizer))
    dtype = token_dtype(len(tok))
    is_end = sentence_end_table(tok)

    done = _load_progress(out)
    stale = {p for split in splits for p in (out / split).glob("*.tar")}
    stale -= {out / rec["path"] for rec, _ in done.values()}
    for path in [*stale, *(p for split in splits for p in (out / split).glob("*.tmp"))]:
        path.unlink()

    records: dict[tuple[str, int], tuple[dict[str, Any], np.ndarray]] = dict(done)
    counters: collections.Counter = collections.Counter()
    init_args = (tok.backend_tokenizer.to_str(), is_end, segment_length, dtype.str)
    with _Pipeline(out, docs_per_shard, workers, init_args, records, progress, chunk_chars) as pipeline:
        for doc in reader:
            split = split_of(doc.utf8, val_fraction)
            shard, pos = divmod(counters[split], docs_per_shard)
            counters[split] += 1
            if (split, shard) in done:
                pipeline.bar.update(1)
            else:
                pipeline.add(split, shard, pos, doc)
        pipeline.flush()

    stats = reader.stats
    skipped = dict(stats.skipped)
    skipped["no_tokens"] = sum(rec["no_tokens"] for rec, _ in records.values())
    written = sum(rec["documents"] for rec, _ in records.values())
    if written == 0:
        raise DataError(
            f"no documents written: all {stats.documents_read:,} documents read were skipped ({skipped})"
            + (f"; e.g. {stats.bad_record_examples[0]}" if stats.bad_record_examples else "")
        )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "segment_length": segment_length,
        "token_dtype": dtype.name,
        "tokenizer": {"path": TOKENIZER_SUBDIR, **identity},
        "settings": settings,
        "inputs": state["inputs"],
        "splits": {split: _finish_split(out, split, records) for split in splits},
        "stats": {
            "documents_read": stats.documents_read,
            "documents_written": written,
            "skipped": skipped,
            "invalid_utf8": stats.invalid_utf8,
        },
    }
    write_json_atomic(out / MANIFEST_NAME, manifest)
    shutil.rmtree(out / PROGRESS_DIR)
    return ShardingSummary(
        output=str(out),
        documents_read=stats.documents_read,
        documents_written=written,
        skipped=skipped,
        invalid_utf8=stats.invalid_utf8,
        splits=_split_totals(manifest),
        shards_written=len(records) - len(done),
        shards_reused=len(done),
        tokens_this_run=pipeline.tokens,
        seconds=time.perf_counter() - started,
        workers=workers,
        ignored_files=stats.ignored_files,
        bad_record_examples=stats.bad_record_examples,
    )


def _finish_split(out: Path, split: str, records: dict) -> dict[str, Any]:
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


def _split_totals(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {
        split: {k: entry[k] for k in ("documents", "segments", "tokens")} | {"shards": len(entry["shards"])}
        for split, entry in manifest["splits"].items()
    }


def _summary_from_manifest(out: Path, seconds: float, workers: int) -> ShardingSummary:
    manifest = read_manifest(out)
    stats = manifest["stats"]
    return ShardingSummary(
        output=str(out),
        documents_read=stats["documents_read"],
        documents_written=stats["documents_written"],
        skipped=stats["skipped"],
        invalid_utf8=stats["invalid_utf8"],
        splits=_split_totals(manifest),
        shards_written=0,
        shards_reused=sum(len(e["shards"]) for e in manifest["splits"].values()),
        tokens_this_run=0,
        seconds=seconds,
        workers=workers,
        already_complete=True,
    )


def _progress_bar(enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(desc="sharding", unit=" docs", disable=not enabled, smoothing=0.1, mininterval=0.5)
