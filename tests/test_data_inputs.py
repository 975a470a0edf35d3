"""Input formats and bad input (memformers.data.prep.sources, and through shard_documents)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import pytest
from data_fixtures import varied_texts

from memformers.data import BadRecordError, DataError, DocumentReader, shard_documents  # noqa: E402

TEXTS = varied_texts(12, seed=3)


def _texts(inputs: list, **kwargs) -> list[str]:
    return [doc.text for doc in DocumentReader([str(i) for i in inputs], **kwargs)]


def _jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)).encode()


def test_text_files_folders_and_globs(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    for i, text in enumerate(TEXTS[:6]):
        (folder / ("sub" if i % 2 else "") / f"{i:02d}.txt").write_text(text, encoding="utf-8")
    (folder / "README.md").write_text("not a document")
    (folder / ".hidden.txt").write_text("hidden")
    reader = DocumentReader([str(folder)])
    texts = [d.text for d in reader]
    # sorted walk: the folder's own files, then sub/
    assert texts == [TEXTS[0], TEXTS[2], TEXTS[4], TEXTS[1], TEXTS[3], TEXTS[5]]
    assert reader.stats.ignored_files == [str(folder / "README.md")]
    assert _texts([str(folder / "*.txt")]) == [TEXTS[0], TEXTS[2], TEXTS[4]]
    assert _texts([str(folder / "**" / "*.txt")]) == texts


@pytest.mark.parametrize("suffix,compress", [
    (".jsonl", lambda b: b), (".json", lambda b: b), (".jsonl.gz", gzip.compress), (".jsonl.bz2", bz2.compress),
    (".jsonl.xz", lzma.compress), (".jsonl.zst", None),
])  # fmt: skip
def test_json_lines_plain_and_compressed(tmp_path: Path, suffix: str, compress) -> None:
    if compress is None:
        import zstandard

        compress = zstandard.ZstdCompressor().compress
    path = tmp_path / f"data{suffix}"
    path.write_bytes(compress(_jsonl(TEXTS)))
    docs = list(DocumentReader([str(path)]))
    assert [d.text for d in docs] == TEXTS
    assert docs[3].doc_id == "3" and docs[3].source == f"{path}:4"


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text("\n  " + json.dumps([{"text": t} for t in TEXTS]))
    docs = list(DocumentReader([str(path)]))
    assert [d.text for d in docs] == TEXTS and docs[2].source == f"{path}[2]"


def test_parquet_and_saved_dataset(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": TEXTS, "id": list(range(len(TEXTS)))}), tmp_path / "x.parquet", row_group_size=5)
    docs = list(DocumentReader([str(tmp_path / "x.parquet")], text_field="body"))
    assert [d.text for d in docs] == TEXTS and docs[7].source == f"{tmp_path / 'x.parquet'}#7" and docs[7].doc_id == "7"
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": TEXTS})}).save_to_disk(str(saved))
    assert _texts([saved]) == TEXTS
    with pytest.raises(DataError, match="no split 'validation'"):
        _texts([saved], dataset_split="validation")


def test_folder_of_other_files_goes_to_load_dataset(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train.csv").write_text('text,id\n"one doc.",a\n"two docs.",b\n')
    reader = DocumentReader([str(repo)])
    assert reader.sources[0].kind == "dataset"
    docs = list(reader)
    assert [d.text for d in docs] == ["one doc.", "two docs."] and docs[1].doc_id == "b"
    assert docs[1].source == f"{repo}[train]#1"


def test_missing_unsupported_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        DocumentReader([str(tmp_path / "missing.jsonl")])
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DataError, match="unsupported input file type"):
        DocumentReader([str(tmp_path / "notes.md")])
    with pytest.raises(DataError, match="matches no supported input files"):
        DocumentReader([str(tmp_path / "*.jsonl")])
    with pytest.raises(DataError, match="holds no .* files, and datasets.load_dataset"):
        list(DocumentReader([str(tmp_path)]))


def test_empty_and_whitespace_documents_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    records = [{"text": "a real document."}, {"text": ""}, {"text": " \n\t "}, {"text": "another one."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n\n")
    (tmp_path / "blank.txt").write_text("   \n")
    reader = DocumentReader([str(path), str(tmp_path / "blank.txt")])
    assert [d.text for d in reader] == ["a real document.", "another one."]
    assert reader.stats.documents_read == 5 and reader.stats.skipped == {"empty": 3}
    assert reader.stats.empty_examples == [f"{path}:2", f"{path}:3", str(tmp_path / "blank.txt")]


def test_invalid_utf8_is_replaced_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "caf\xe9 ok"}\n{"text": "fine"}\n{"text": "lone \\ud800 surrogate"}\n')
    (tmp_path / "t.txt").write_bytes(b"\xef\xbb\xbfbom then bad \xff byte")
    reader = DocumentReader([str(path), str(tmp_path / "t.txt")])
    texts = [d.text for d in reader]
    assert texts == ["caf\ufffd ok", "fine", "lone \ufffd surrogate", "bom then bad \ufffd byte"]
    assert reader.stats.invalid_utf8 == 3 and not reader.stats.skipped


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "good."}\n{"text": "broken\n{"text": "good again."}\n[1, 2]\n')
    with pytest.raises(BadRecordError, match=rf"{path}:2: malformed JSON .*--skip-bad-records"):
        list(DocumentReader([str(path)]))
    reader = DocumentReader([str(path)], skip_bad_records=True)
    assert [d.text for d in reader] == ["good.", "good again."]
    assert reader.stats.skipped == {"bad_record": 2} and reader.stats.documents_read == 4
    assert reader.stats.bad_record_examples[0].startswith(f"{path}:2: malformed JSON")
    assert "expected a JSON object" in reader.stats.bad_record_examples[1]


def test_missing_text_field_names_the_field_and_those_present(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"content": "x", "id": 1}) + "\n")
    with pytest.raises(
        BadRecordError, match=r"d.jsonl:1: no field 'text' in the record; fields present: \['content', 'id'\]"
    ):
        list(DocumentReader([str(path)]))
    assert _texts([path], text_field="content") == ["x"]
    with pytest.raises(BadRecordError, match=r"field 'content' is a int"):
        path.write_text(json.dumps({"content": 5}) + "\n")
        list(DocumentReader([str(path)], text_field="content"))


def test_sharding_summary_reconciles(tmp_path: Path, bpe_tokenizer: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": t}) for t in TEXTS] + [
        '{"text": ""}',
        "{oops",
        json.dumps({"body": "x"}),
        '{"text": "  "}',
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "bad \xff byte."}\n')
    with pytest.raises(BadRecordError, match=r"d.jsonl:14: malformed JSON"):
        shard_documents([str(path)], bpe_tokenizer, tmp_path / "s1", 64, workers=0, progress=False)
    summary = shard_documents(
        [str(path)], bpe_tokenizer, tmp_path / "s2", 64, workers=1, skip_bad_records=True, progress=False
    )
    assert summary.documents_read == len(TEXTS) + 5
    assert summary.documents_written == len(TEXTS) + 1
    assert summary.skipped == {"empty": 2, "bad_record": 2, "no_tokens": 0}
    assert summary.invalid_utf8 == 1 and summary.reconciles
    text = summary.format()
    assert "documents skipped" in text and "bad_record 2" in text and "empty 2" in text and "reconciles" in text


def test_all_documents_skipped_is_an_error(tmp_path: Path, bpe_tokenizer: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": ""}\n{"text": " "}\n')
    with pytest.raises(DataError, match="no documents written"):
        shard_documents([str(path)], bpe_tokenizer, tmp_path / "s", 64, workers=0, progress=False)
