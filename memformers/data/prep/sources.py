"""Reading corpus documents from files, folders, globs and 🤗 datasets, in a deterministic order.

Inputs (each argument may be any of these; folders are walked recursively and globs expanded, both in
sorted order, hidden entries skipped):

* `.txt` — one document per file.
* `.jsonl` / `.json` — one JSON object per line (a `.json` file may instead hold one JSON array of
  objects); the document is the `text_field` string, its id the optional `id_field`.
* `.parquet` — one row per document, the `text_field` column.
* any of the above compressed: `.gz`, `.zst`, `.bz2`, `.xz` (e.g. `part-0001.jsonl.zst`).
* a folder written by `datasets.Dataset.save_to_disk`; a 🤗 dataset name for `datasets.load_dataset`
  (streamed; a hub name needs the hub to be reachable); a folder without files of the types above
  (e.g. CSV files) also goes to `datasets.load_dataset`.

Text and JSON files are read with streaming line readers rather than through `datasets`' JSON builder,
which could neither name the file and line of a malformed record, nor skip it, nor count invalid UTF-8;
Parquet is read with pyarrow (what `datasets` uses) one file at a time, so each document keeps its file
and row as its source. 🤗 dataset names and saved datasets go through `datasets`.

Every record is checked by one `RecordCheck`, whoever reads it (`DocumentReader` here, in input order, or a
sharding worker reading one part of an input, tasks.py). A record is located by its *number* in its input (line,
array index or row), turned into a name (`file:line`, `file[i]`, `file#row`, `name[split]#row`, or the file
itself for a `.txt`) by `where_of`: a worker scanning a byte range of a file learns the number of its first line
only later.

Bad input: empty or whitespace-only documents are skipped and counted (`empty`); invalid UTF-8 (and
lone surrogates from JSON escapes) are decoded with U+FFFD and counted (`invalid_utf8`), the document
is kept; a malformed record (bad JSON, no, null or non-text `text_field`) and a compressed file that is
truncated or corrupt raise BadRecordError naming the file and line, or are skipped and counted (`bad_record`;
the unreadable rest of a compressed file counts as one) with `skip_bad_records=True`. `ReadStats` keeps
the counts, documents_read = documents yielded + sum(skipped), and names the first few of each kind.
"""

from __future__ import annotations

import bz2
import collections
import glob
import gzip
import io
import json
import lzma
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from ..errors import BadRecordError, DataError

FILE_KINDS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".zst", ".bz2", ".xz")
MAX_KEPT_MESSAGES = 5
SKIP_HINT = "pass --skip-bad-records to skip and count such records"


@dataclass(frozen=True)
class Source:
    """One resolved input: kind is text | json | parquet | saved_dataset | dataset (load_dataset)."""

    kind: str
    location: str
    compression: str | None = None

    def fingerprint(self, dataset_split: str, dataset_config: str | None) -> dict[str, Any]:
        """What identifies this input's content (for resuming and the manifest)."""
        if self.kind == "dataset":
            entry = {"kind": self.kind, "name": self.location, "config": dataset_config, "split": dataset_split}
            if os.path.isdir(self.location):
                entry["path"] = os.path.abspath(self.location)
            return entry
        path = Path(self.location)
        stat_path = path / "state.json" if path.is_dir() and (path / "state.json").exists() else path
        stat = stat_path.stat()
        entry = {"kind": self.kind, "path": os.path.abspath(self.location), "mtime_ns": stat.st_mtime_ns}
        if path.is_file():
            entry["bytes"] = stat.st_size
        if self.kind == "saved_dataset":
            entry["split"] = dataset_split
        return entry

    @property
    def size(self) -> int:
        """Bytes on disk (a saved dataset: its files; a 🤗 dataset name: 0): what reading it gets through."""
        path = Path(self.location)
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return 0

    def is_json_array(self) -> bool:
        """Whether a JSON file holds one JSON array rather than JSON lines (its first non-blank byte is `[`). A
        compressed file that cannot be read that far is taken for JSON lines: reading it names the damage."""
        try:
            with open_binary(self.location, self.compression) as f:
                return f.peek(1 << 16).lstrip()[:1] == b"["
        except _decompression_errors():
            if self.compression is None:
                raise
            return False


@dataclass
class Document:
    """A document to shard: its text (and UTF-8 bytes), where it came from and its record id if any."""

    text: str
    utf8: bytes
    source: str
    doc_id: str | None = None


class Doc(NamedTuple):
    """A document as read, located by its number in its input (line, array index or row; see `where_of`)."""

    text: str
    utf8: bytes
    doc_id: str | None
    number: int


def where_of(source: Source, number: int, *, array: bool = False, dataset_split: str = "train") -> str:
    """The name of record `number` of `source`: `file:line`, `file[i]` (a JSON array), `file#row`,
    `name[split]#row`, or the file itself for a `.txt`."""
    if source.kind == "text":
        return source.location
    if source.kind == "json":
        return f"{source.location}[{number}]" if array else f"{source.location}:{number}"
    if source.kind == "parquet":
        return f"{source.location}#{number}"
    return f"{source.location}[{dataset_split}]#{number}"


NOTE_KINDS = ("bad_record", "empty", "invalid_utf8")


@dataclass
class Tally:
    """What one reader counted, its notes located by record number: documents read, skipped by reason,
    invalid UTF-8, and (kind, number, message) of the first few of each of NOTE_KINDS."""

    documents_read: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    invalid_utf8: int = 0
    notes: list[tuple[str, int, str]] = field(default_factory=list)
    _kept: collections.Counter = field(default_factory=collections.Counter, repr=False)

    def note(self, kind: str, number: int, message: str) -> None:
        if self._kept[kind] < MAX_KEPT_MESSAGES:
            self._kept[kind] += 1
            self.notes.append((kind, number, message))

    def skip(self, reason: str, number: int, message: str) -> None:
        self.skipped[reason] += 1
        self.note(reason, number, message)


@dataclass
class ReadStats:
    """Counts of what was read, documents_read = yielded + sum(skipped.values()), and the first few
    bad records (`where: message`), empty documents and documents with invalid UTF-8 (`where`), by name."""

    documents_read: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    invalid_utf8: int = 0
    bad_record_examples: list[str] = field(default_factory=list)
    empty_examples: list[str] = field(default_factory=list)
    invalid_utf8_examples: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, tally: Tally, where: Callable[[int], str]) -> ReadStats:
        """A reader's tally, its notes named by `where` (record number -> name)."""
        stats = cls(tally.documents_read, collections.Counter(tally.skipped), tally.invalid_utf8)
        for kind, number, message in tally.notes:
            stats.examples(kind).append(f"{where(number)}: {message}" if kind == "bad_record" else where(number))
        return stats

    def update(self, other: ReadStats) -> None:
        """Add `other`'s counts, and its examples while fewer than MAX_KEPT_MESSAGES of a kind are kept (`other`
        read a later part of the inputs)."""
        self.documents_read += other.documents_read
        self.skipped.update(other.skipped)
        self.invalid_utf8 += other.invalid_utf8
        for kind in NOTE_KINDS:
            mine = self.examples(kind)
            mine += other.examples(kind)[: MAX_KEPT_MESSAGES - len(mine)]

    def examples(self, kind: str) -> list[str]:
        return {
            "bad_record": self.bad_record_examples,
            "empty": self.empty_examples,
            "invalid_utf8": self.invalid_utf8_examples,
        }[kind]

    def example_lines(self) -> list[str]:
        """Summary lines naming the first few bad records, empty documents and documents with invalid UTF-8."""
        lines = [f"  skipped bad record: {example}" for example in self.bad_record_examples]
        for what, examples in (("empty", self.empty_examples), ("invalid UTF-8", self.invalid_utf8_examples)):
            if examples:
                more = ", ..." if len(examples) == MAX_KEPT_MESSAGES else ""
                lines.append(f"  {what} (the first {len(examples)}): {', '.join(examples)}{more}")
        return lines

    def as_dict(self) -> dict[str, Any]:
        """The counts and examples as plain JSON (a slice's record, the task log)."""
        return {
            "documents_read": self.documents_read,
            "skipped": dict(self.skipped),
            "invalid_utf8": self.invalid_utf8,
            **{f"{kind}_examples": self.examples(kind) for kind in NOTE_KINDS},
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ReadStats:
        """`as_dict`'s record (counts missing from it are 0)."""
        counts = (record.get("documents_read", 0), collections.Counter(record.get("skipped", {})))
        stats = cls(*counts, record.get("invalid_utf8", 0))
        for kind in NOTE_KINDS:
            stats.examples(kind).extend(record.get(f"{kind}_examples", []))
        return stats


class RecordError(Exception):
    """A bad record met while bad records are not skipped: its number in its input and what is wrong."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(number, message)
        self.number, self.message = number, message

    def located(self, where: str) -> BadRecordError:
        return BadRecordError(f"{where}: {self.message} ({SKIP_HINT})")


@dataclass(frozen=True)
class RecordCheck:
    """Turns records into documents by the rules of the module docstring, counting into a Tally."""

    text_field: str = "text"
    id_field: str | None = "id"
    skip_bad_records: bool = False

    def bad(self, tally: Tally, number: int, message: str) -> None:
        """Skip and count a bad record, or raise RecordError."""
        if not self.skip_bad_records:
            raise RecordError(number, message)
        tally.skip("bad_record", number, message)

    def json_line(self, line: bytes, number: int, tally: Tally) -> Doc | None:
        """One JSON lines record; None when it is skipped (and counted)."""
        invalid = False
        try:
            try:
                record = json.loads(line)
            except UnicodeDecodeError:
                record, invalid = json.loads(line.decode("utf-8", "replace")), True
        except json.JSONDecodeError as exc:
            tally.documents_read += 1
            self.bad(tally, number, f"malformed JSON ({exc.msg} at column {exc.colno})")
            return None
        if not invalid and type(record) is dict:  # the usual record, in few steps (a sharding worker's hot path)
            text = record.get(self.text_field)
            if type(text) is str and text and not text.isspace():
                try:
                    utf8 = text.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates: the general path below replaces and counts them
                    pass
                else:
                    tally.documents_read += 1
                    doc_id = record.get(self.id_field) if self.id_field else None
                    return Doc(text, utf8, None if doc_id is None else str(doc_id), number)
        return self.record(record, number, tally, invalid)

    def record(self, record: Any, number: int, tally: Tally, invalid: bool = False) -> Doc | None:
        """A JSON object (or a dataset row); `invalid`: its bytes had invalid UTF-8 (counted when in the text)."""
        tally.documents_read += 1
        if not isinstance(record, dict):
            self.bad(tally, number, f"expected a JSON object, got {type(record).__name__}")
            return None
        if self.text_field not in record:
            self.bad(
                tally,
                number,
                f"no field {self.text_field!r} in the record; fields present: {sorted(record)} "
                "(choose the text field with --text-field)",
            )
            return None
        doc_id = record.get(self.id_field) if self.id_field else None
        text = record[self.text_field]
        invalid = invalid and isinstance(text, str) and "\ufffd" in text
        return self.value(text, number, tally, doc_id, counted=True, invalid=invalid)

    def value(
        self, value: Any, number: int, tally: Tally, doc_id: Any = None, *, counted: bool = False, invalid: bool = False
    ) -> Doc | None:
        """A text value (str, or bytes decoded as UTF-8); `counted`: already counted as read."""
        if not counted:
            tally.documents_read += 1
        if isinstance(value, bytes):
            value, replaced = decode_utf8(value)
            invalid = invalid or replaced
        if not isinstance(value, str):
            what = "null" if value is None else f"a {type(value).__name__}, expected a string"
            self.bad(tally, number, f"field {self.text_field!r} is {what}")
            return None
        if not value or value.isspace():
            tally.skip("empty", number, "empty or whitespace-only")
            return None
        try:
            utf8 = value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\ud800" escape
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            utf8, invalid = value.encode("utf-8"), True
        if invalid:
            tally.invalid_utf8 += 1
            tally.note("invalid_utf8", number, "invalid UTF-8")
        return Doc(value, utf8, None if doc_id is None else str(doc_id), number)


def classify_file(path: str) -> tuple[str, str | None] | None:
    """(kind, compression) of a file from its name, or None when it is not a supported type."""
    name = os.path.basename(path).lower()
    compression = None
    for ext in COMPRESSIONS:
        if name.endswith(ext):
            compression, name = ext, name[: -len(ext)]
            break
    kind = FILE_KINDS.get(os.path.splitext(name)[1])
    if kind is None or (kind == "parquet" and compression):
        return None
    return kind, compression


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _looks_like_path(spec: str) -> bool:
    return (
        os.path.isabs(spec)
        or spec.startswith((".", "~"))
        or os.path.splitext(spec)[1].lower() in (*FILE_KINDS, *COMPRESSIONS)
    )


def resolve_inputs(inputs: list[str], ignored: list[str] | None = None) -> list[Source]:
    """Expand input arguments into Sources, in a deterministic order.

    Files of unsupported types found in folders or globs are skipped and appended to `ignored`;
    an explicitly named unsupported file, a missing path or a glob matching nothing raises DataError.
    """
    ignored = ignored if ignored is not None else []
    sources: list[Source] = []
    for spec in inputs:
        spec = os.path.expanduser(os.fspath(spec))
        path = Path(spec)
        if path.is_file():
            sources.append(_file_source(spec, explicit=True, ignored=ignored))
        elif path.is_dir():
            sources += _dir_sources(path, ignored) or [Source("dataset", spec)]
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            found = []
            for match in matches:
                if os.path.isdir(match):
                    found += _dir_sources(Path(match), ignored)
                else:
                    source = _file_source(match, explicit=False, ignored=ignored)
                    if source is not None:
                        found.append(source)
            if not found:
                raise DataError(f"glob {spec} matches no supported input files ({_supported()})")
            sources += found
        elif _looks_like_path(spec):
            raise DataError(f"input {spec} does not exist")
        else:
            sources.append(Source("dataset", spec))
    return sources


def _supported() -> str:
    return f"{', '.join(FILE_KINDS)}, optionally compressed {'/'.join(COMPRESSIONS)} (not .parquet)"


def _file_source(path: str, *, explicit: bool, ignored: list[str]) -> Source | None:
    kinds = classify_file(path)
    if kinds is None:
        if explicit:
            raise DataError(f"unsupported input file type: {path} (supported: {_supported()})")
        ignored.append(path)
        return None
    return Source(kinds[0], path, kinds[1])


def _dir_sources(root: Path, ignored: list[str]) -> list[Source]:
    if _is_saved_dataset(root):
        return [Source("saved_dataset", str(root))]
    found: list[Source] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if here != root and _is_saved_dataset(here):
            found.append(Source("saved_dataset", dirpath))
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            if not name.startswith("."):
                source = _file_source(os.path.join(dirpath, name), explicit=False, ignored=ignored)
                if source is not None:
                    found.append(source)
    return found


def open_binary(path: str, compression: str | None) -> IO[bytes]:
    """A buffered binary reader (with `peek`) over a possibly compressed file."""
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".xz":
        return lzma.open(path, "rb")
    if compression == ".zst":
        return io.BufferedReader(_ZstdFrames(path), 1 << 20)
    return open(path, "rb", buffering=1 << 20)


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a .zst file, frame after frame. Unlike zstandard's stream reader, which ends
    quietly where a truncated file ends, this raises EOFError when the file ends inside a frame."""

    def __init__(self, path: str) -> None:
        import zstandard

        self.file = open(path, "rb")
        self.context = zstandard.ZstdDecompressor()
        self.frame = self.context.decompressobj()
        self.in_frame = False  # bytes of the current frame were read, and its end was not
        self.out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.out:
            chunk = self.file.read(1 << 16)  # compressed: its output stays a few MiB
            if not chunk:
                if self.in_frame:
                    raise EOFError("the file ends inside a zstd frame (truncated)")
                return 0
            parts = []
            while chunk:
                if self.frame.eof:  # the next frame
                    self.frame = self.context.decompressobj()
                parts.append(self.frame.decompress(chunk))
                self.in_frame = not self.frame.eof
                chunk = self.frame.unused_data if self.frame.eof else b""
            self.out = memoryview(parts[0] if len(parts) == 1 else b"".join(parts))
        n = min(len(buffer), len(self.out))
        buffer[:n] = self.out[:n]
        self.out = self.out[n:]
        return n

    def close(self) -> None:
        self.file.close()
        super().close()


def _decompression_errors() -> tuple[type[BaseException], ...]:
    """What reading a truncated or corrupt compressed file raises (gzip, bz2, xz, zstd)."""
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error, lzma.LZMAError)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def damaged(source: Source, exc: BaseException) -> str:
    """The message for a compressed input that cannot be read to its end."""
    return (
        f"the {source.compression} data is truncated or corrupt ({exc.__class__.__name__}: {exc}); the rest of "
        "the file cannot be read: re-download or re-compress it"
    )


def numbered_lines(f: IO[bytes], source: Source, check: RecordCheck, tally: Tally) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of each non-blank line of `f` (blank lines are not records); a truncated or corrupt
    compressed file ends the lines with a bad record numbered by the line that could not be read."""
    lineno = 0
    try:
        for lineno, line in enumerate(f, 1):
            if line and not line.isspace():
                yield lineno, line
    except _decompression_errors() as exc:
        if source.compression is None:
            raise
        tally.documents_read += 1
        check.bad(tally, lineno + 1, damaged(source, exc))


def read_input(
    source: Source, check: RecordCheck, tally: Tally, *, dataset_split: str = "train", dataset_config: str | None = None
) -> Iterator[Doc]:
    """The documents of a whole input, in order (JSON: `source.is_json_array()` tells how they are numbered)."""
    if source.kind == "text":
        yield from read_text(source, check, tally)
    elif source.kind == "json" and source.is_json_array():
        yield from read_json_array(source, check, tally)
    elif source.kind == "json":
        with open_binary(source.location, source.compression) as f:
            for number, line in numbered_lines(f, source, check, tally):
                doc = check.json_line(line, number, tally)
                if doc is not None:
                    yield doc
    elif source.kind == "parquet":
        yield from read_parquet(source, check, tally)
    else:
        yield from read_dataset(source, check, tally, dataset_split, dataset_config)


def decode_utf8(data: bytes) -> tuple[str, bool]:
    """`data` as text, and whether it held invalid UTF-8 (then replaced by U+FFFD, and counted by the caller)."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), True


def read_text(source: Source, check: RecordCheck, tally: Tally, number: int = 0) -> Iterator[Doc]:
    """A `.txt` input: one document (a byte-order mark is not content)."""
    try:
        with open_binary(source.location, source.compression) as f:
            data = f.read()
    except _decompression_errors() as exc:
        if source.compression is None:
            raise
        tally.documents_read += 1
        check.bad(tally, number, damaged(source, exc))
        return
    text, invalid = decode_utf8(data)
    if text.startswith("\ufeff"):
        text = text[1:]
    doc = check.value(text, number, tally, invalid=invalid)
    if doc is not None:
        yield doc


def read_json_array(source: Source, check: RecordCheck, tally: Tally) -> Iterator[Doc]:
    try:
        with open_binary(source.location, source.compression) as f:
            data = f.read()
    except _decompression_errors() as exc:
        if source.compression is None:
            raise
        raise BadRecordError(f"{source.location}: {damaged(source, exc)}") from exc
    text, invalid = decode_utf8(data)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRecordError(
            f"{source.location}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno}); a JSON "
            "array cannot be read in part: fix the file or convert it to JSON lines"
        ) from exc
    for i, record in enumerate(records):
        doc = check.record(record, i, tally, invalid)
        if doc is not None:
            yield doc


def read_parquet(source: Source, check: RecordCheck, tally: Tally) -> Iterator[Doc]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(source.location)
    names = parquet.schema_arrow.names
    if check.text_field not in names:
        raise BadRecordError(
            f"{source.location}: no column {check.text_field!r}; columns present: {names} "
            "(choose the text field with --text-field)"
        )
    columns = [check.text_field] + ([check.id_field] if check.id_field in names else [])
    row = 0
    for batch in parquet.iter_batches(batch_size=1024, columns=columns):
        texts = batch.column(0).to_pylist()
        ids = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
        for text, doc_id in zip(texts, ids):
            doc = check.value(text, row, tally, doc_id)
            row += 1
            if doc is not None:
                yield doc


def _open_dataset(source: Source, split: str, config: str | None) -> Any:
    import datasets

    if source.kind == "saved_dataset":
        dataset = datasets.load_from_disk(source.location)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise DataError(
                    f"{source.location} has no split {split!r}; it has {sorted(dataset)} (choose with --dataset-split)"
                )
            dataset = dataset[split]
        return dataset
    try:
        return datasets.load_dataset(source.location, config, split=split, streaming=True)
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, ...)
        what = (
            f"folder {source.location} holds no {_supported()} files"
            if os.path.isdir(source.location)
            else f"input {source.location!r} is not an existing file, folder or glob"
        )
        raise DataError(f"{what}, and datasets.load_dataset({source.location!r}) failed: {exc}") from exc


def read_dataset(source: Source, check: RecordCheck, tally: Tally, split: str, config: str | None) -> Iterator[Doc]:
    dataset = _open_dataset(source, split, config)
    names = dataset.column_names
    if names is not None:
        if check.text_field not in names:
            raise BadRecordError(
                f"{source.location}[{split}]: no field {check.text_field!r}; fields present: {sorted(names)} "
                "(choose the text field with --text-field)"
            )
        dataset = dataset.select_columns([c for c in (check.text_field, check.id_field) if c in names])
    row = 0
    for batch in dataset.iter(batch_size=256):
        if check.text_field not in batch:  # column names were unknown up front
            for values in zip(*batch.values()):
                check.record(dict(zip(batch, values)), row, tally)  # raises or counts
                row += 1
            continue
        texts = batch[check.text_field]
        ids = batch.get(check.id_field) if check.id_field else None
        for i, text in enumerate(texts):
            doc = check.value(text, row, tally, None if ids is None else ids[i])
            row += 1
            if doc is not None:
                yield doc


def input_namer(source: Source, dataset_split: str) -> Callable[[int], str]:
    """`where_of` for the records of a whole input (a JSON file is peeked at to tell an array from lines)."""
    array = source.kind == "json" and source.is_json_array()
    return lambda number: where_of(source, number, array=array, dataset_split=dataset_split)


class DocumentReader:
    """Iterates the documents of all inputs in order, counting what it skips (see module docstring)."""

    def __init__(
        self,
        inputs: list[str],
        *,
        text_field: str = "text",
        id_field: str | None = "id",
        skip_bad_records: bool = False,
        dataset_split: str = "train",
        dataset_config: str | None = None,
    ) -> None:
        if not inputs:
            raise DataError("no inputs given")
        self.check = RecordCheck(text_field, id_field, skip_bad_records)
        self.dataset_split = dataset_split
        self.dataset_config = dataset_config
        self.stats = ReadStats()
        self.sources = resolve_inputs(list(inputs), self.stats.ignored_files)

    def fingerprint(self) -> list[dict[str, Any]]:
        """Identifies the inputs' content: kinds, absolute paths, sizes and mtimes, dataset names."""
        return [s.fingerprint(self.dataset_split, self.dataset_config) for s in self.sources]

    def __iter__(self) -> Iterator[Document]:
        for source in self.sources:
            yield from self.read_source(source)

    def read_source(self, source: Source) -> Iterator[Document]:
        """The documents of one input (counted in `stats` like the rest)."""
        where, tally = input_namer(source, self.dataset_split), Tally()
        try:
            for doc in read_input(
                source, self.check, tally, dataset_split=self.dataset_split, dataset_config=self.dataset_config
            ):
                yield Document(doc.text, doc.utf8, where(doc.number), doc.doc_id)
        except RecordError as bad:
            raise bad.located(where(bad.number)) from None
        finally:
            self.stats.update(ReadStats.of(tally, where))
