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

Bad input: empty or whitespace-only documents are skipped and counted (`empty`); invalid UTF-8 (and
lone surrogates from JSON escapes) are decoded with U+FFFD and counted (`invalid_utf8`), the document
is kept; a malformed record (bad JSON, no or non-text `text_field`) raises BadRecordError naming the
file, line and fields, or is skipped and counted (`bad_record`) with `skip_bad_records=True`.
`ReadStats` keeps the counts: documents_read = documents yielded + sum(skipped).
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import BadRecordError, DataError

FILE_KINDS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".zst", ".bz2", ".xz")
MAX_KEPT_MESSAGES = 5


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


@dataclass
class Document:
    """A document to shard: its text (and UTF-8 bytes), where it came from and its record id if any."""

    text: str
    utf8: bytes
    source: str
    doc_id: str | None = None


@dataclass
class ReadStats:
    """Counts of what was read: documents_read = yielded + sum(skipped.values())."""

    documents_read: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    invalid_utf8: int = 0
    bad_record_examples: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)


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
        import zstandard

        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True), 1 << 20)
    return open(path, "rb", buffering=1 << 20)


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
        self.text_field = text_field
        self.id_field = id_field
        self.skip_bad_records = skip_bad_records
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
        readers = {
            "text": self._read_text,
            "json": self._read_json,
            "parquet": self._read_parquet,
            "saved_dataset": self._read_dataset,
            "dataset": self._read_dataset,
        }
        return readers[source.kind](source)

    # -- records -----------------------------------------------------------------------------------

    def _bad(self, where: str, message: str) -> None:
        """Skip and count a bad record, or raise BadRecordError naming it."""
        if not self.skip_bad_records:
            raise BadRecordError(f"{where}: {message} (pass --skip-bad-records to skip and count such records)")
        self.stats.skipped["bad_record"] += 1
        if len(self.stats.bad_record_examples) < MAX_KEPT_MESSAGES:
            self.stats.bad_record_examples.append(f"{where}: {message}")

    def _from_record(self, record: Any, where: str, invalid: bool = False) -> Document | None:
        """`invalid`: the record's bytes had invalid UTF-8 (counted when it was in the text)."""
        self.stats.documents_read += 1
        if not isinstance(record, dict):
            self._bad(where, f"expected a JSON object, got {type(record).__name__}")
            return None
        if self.text_field not in record:
            self._bad(
                where,
                f"no field {self.text_field!r} in the record; fields present: {sorted(record)} "
                "(choose the text field with --text-field)",
            )
            return None
        doc_id = record.get(self.id_field) if self.id_field else None
        text = record[self.text_field]
        invalid = invalid and isinstance(text, str) and "\ufffd" in text
        return self._from_value(text, where, doc_id, counted=True, invalid=invalid)

    def _from_value(
        self, value: Any, where: str, doc_id: Any = None, *, counted: bool = False, invalid: bool = False
    ) -> Document | None:
        if not counted:
            self.stats.documents_read += 1
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                value, invalid = value.decode("utf-8", "replace"), True
        if value is None:
            value = ""
        if not isinstance(value, str):
            self._bad(where, f"field {self.text_field!r} is a {type(value).__name__}, expected a string")
            return None
        if not value or value.isspace():
            self.stats.skipped["empty"] += 1
            return None
        try:
            utf8 = value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\ud800" escape
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            utf8, invalid = value.encode("utf-8"), True
        if invalid:
            self.stats.invalid_utf8 += 1
        return Document(value, utf8, where, None if doc_id is None else str(doc_id))

    # -- readers -----------------------------------------------------------------------------------

    def _read_text(self, source: Source) -> Iterator[Document]:
        with open_binary(source.location, source.compression) as f:
            data = f.read()
        invalid = False
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text, invalid = data.decode("utf-8", "replace"), True
        if text.startswith("\ufeff"):  # a byte-order mark is not content
            text = text[1:]
        doc = self._from_value(text, source.location, invalid=invalid)
        if doc is not None:
            yield doc

    def _read_json(self, source: Source) -> Iterator[Document]:
        with open_binary(source.location, source.compression) as f:
            if f.peek(1 << 16).lstrip()[:1] == b"[":  # one JSON array rather than JSON lines
                yield from self._read_json_array(source, f.read())
                return
            for lineno, line in enumerate(f, 1):
                if not line or line.isspace():
                    continue  # blank lines are not records
                doc = self.read_json_line(line, f"{source.location}:{lineno}")
                if doc is not None:
                    yield doc

    def read_json_line(self, line: bytes, where: str) -> Document | None:
        """One JSON lines record, `where` naming it (file:line); None when it is skipped (and counted)."""
        invalid = False
        try:
            try:
                record = json.loads(line)
            except UnicodeDecodeError:
                record, invalid = json.loads(line.decode("utf-8", "replace")), True
        except json.JSONDecodeError as exc:
            self.stats.documents_read += 1
            self._bad(where, f"malformed JSON ({exc.msg} at column {exc.colno})")
            return None
        return self._from_record(record, where, invalid)

    def _read_json_array(self, source: Source, data: bytes) -> Iterator[Document]:
        invalid = False
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text, invalid = data.decode("utf-8", "replace"), True
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadRecordError(
                f"{source.location}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno}); a JSON "
                "array cannot be read in part: fix the file or convert it to JSON lines"
            ) from exc
        for i, record in enumerate(records):
            doc = self._from_record(record, f"{source.location}[{i}]", invalid)
            if doc is not None:
                yield doc

    def _read_parquet(self, source: Source) -> Iterator[Document]:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(source.location)
        names = parquet.schema_arrow.names
        if self.text_field not in names:
            raise BadRecordError(
                f"{source.location}: no column {self.text_field!r}; columns present: {names} "
                "(choose the text field with --text-field)"
            )
        columns = [self.text_field] + ([self.id_field] if self.id_field in names else [])
        row = 0
        for batch in parquet.iter_batches(batch_size=1024, columns=columns):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
            for text, doc_id in zip(texts, ids):
                doc = self._from_value(text, f"{source.location}#{row}", doc_id)
                row += 1
                if doc is not None:
                    yield doc

    def _read_dataset(self, source: Source) -> Iterator[Document]:
        import datasets

        split = self.dataset_split
        if source.kind == "saved_dataset":
            dataset = datasets.load_from_disk(source.location)
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise DataError(
                        f"{source.location} has no split {split!r}; it has {sorted(dataset)} "
                        "(choose with --dataset-split)"
                    )
                dataset = dataset[split]
        else:
            try:
                dataset = datasets.load_dataset(source.location, self.dataset_config, split=split, streaming=True)
            except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, ...)
                what = (
                    f"folder {source.location} holds no {_supported()} files"
                    if os.path.isdir(source.location)
                    else f"input {source.location!r} is not an existing file, folder or glob"
                )
                raise DataError(f"{what}, and datasets.load_dataset({source.location!r}) failed: {exc}") from exc
        names = dataset.column_names
        name = f"{source.location}[{split}]"
        if names is not None:
            if self.text_field not in names:
                raise BadRecordError(
                    f"{name}: no field {self.text_field!r}; fields present: {sorted(names)} "
                    "(choose the text field with --text-field)"
                )
            dataset = dataset.select_columns([c for c in (self.text_field, self.id_field) if c in names])
        row = 0
        for batch in dataset.iter(batch_size=256):
            if self.text_field not in batch:  # column names were unknown up front
                for values in zip(*batch.values()):
                    self._from_record(dict(zip(batch, values)), f"{name}#{row}")  # raises or counts
                    row += 1
                continue
            texts = batch[self.text_field]
            ids = batch.get(self.id_field) if self.id_field else None
            for i, text in enumerate(texts):
                doc = self._from_value(text, f"{name}#{row}", None if ids is None else ids[i])
                row += 1
                if doc is not None:
                    yield doc
