"""Input formats and bad input (memformers.data.prep.sources, and through shard_documents)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
from pathlib import Path

import pytest
from data_fixtures import data_prep_script, varied_texts

from memformers.data import BadRecordError, DataError, DocumentReader, read_manifest, shard_documents  # noqa: E402

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


# -- what a user sees when an input is bad: the real scripts, their exit codes and messages (issue 17) ---------------


def _script(name: str, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = data_prep_script(name).main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _shard(inputs: list[Path], tokenizer: Path, out: Path, *extra: str) -> list[str]:
    return ["--input", *map(str, inputs), "--tokenizer", str(tokenizer), "--output", str(out), "--segment-length",
            "64", "--workers", "1", "--no-progress", *extra]  # fmt: skip


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_a_truncated_compressed_input_is_named_or_counted(
    tmp_path: Path, bpe_tokenizer: Path, suffix: str, capsys: pytest.CaptureFixture
) -> None:
    import zstandard

    compress = gzip.compress if suffix == ".gz" else zstandard.ZstdCompressor().compress
    whole = compress(_jsonl(varied_texts(1000, seed=4)))  # several zstd blocks: a cut one keeps some
    path = tmp_path / f"part-0001.jsonl{suffix}"
    path.write_bytes(whole[: len(whole) * 2 // 3])  # a download that stopped early

    code, _, err = _script("shard_documents", _shard([path], bpe_tokenizer, tmp_path / "s"), capsys)
    assert code == 2 and "Traceback" not in err
    assert re.search(rf"{re.escape(str(path))}:\d+: the {suffix} data is truncated or corrupt", err)
    assert "--skip-bad-records" in err and not (tmp_path / "s").exists()

    code, out, _ = _script(
        "shard_documents", _shard([path], bpe_tokenizer, tmp_path / "s", "--skip-bad-records"), capsys
    )
    assert code == 0 and "(bad_record 1)" in out and f"skipped bad record: {path}:" in out
    assert "reconciles" in out and read_manifest(tmp_path / "s")["stats"]["documents_written"] > 0

    argv = ["--input", str(path), "--vocab-size", "300", "--output", str(tmp_path / "tok"), "--no-progress"]
    code, _, err = _script("train_tokenizer", argv, capsys)
    assert code == 2 and f"{path}:" in err and "truncated" in err and "SentencePiece" not in err


def test_train_tokenizer_replaces_a_folder_only_with_overwrite(
    tmp_path: Path, synthetic_jsonl: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "tok"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["--input", str(synthetic_jsonl), "--vocab-size", "400", "--output", str(out), "--no-progress"]
    code, _, err = _script("train_tokenizer", argv, capsys)
    assert code == 2 and f"--output {out} is not empty (it holds notes.txt)" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # untouched
    code, out_text, _ = _script("train_tokenizer", [*argv, "--overwrite"], capsys)
    assert code == 0 and "special ids" in out_text
    assert not (out / "notes.txt").exists() and (out / "tokenizer.json").is_file()  # replaced whole


def test_a_null_text_is_a_bad_record(tmp_path: Path, bpe_tokenizer: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "A document."}\n{"id": 7, "text": null}\n{"text": "Another."}\n')
    code, _, err = _script("shard_documents", _shard([path], bpe_tokenizer, tmp_path / "s"), capsys)
    assert code == 2 and f"{path}:2: field 'text' is null" in err and "--skip-bad-records" in err
    code, out, _ = _script(
        "shard_documents", _shard([path], bpe_tokenizer, tmp_path / "s", "--skip-bad-records"), capsys
    )
    assert code == 0 and "(bad_record 1)" in out and f"skipped bad record: {path}:2: field 'text' is null" in out


def test_the_summary_names_empty_documents_and_invalid_utf8(
    tmp_path: Path, bpe_tokenizer: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(7):
        (folder / f"{i:02d}-good.txt").write_text(f"Document number {i}.")
        (folder / f"{i:02d}-empty.txt").write_text(" \n" if i % 2 else "")
    (folder / "08-latin1.txt").write_bytes(b"caf\xe9 cr\xe8me.")
    (folder / "09-lines.jsonl").write_bytes(b'{"text": "fine."}\n{"text": "na\xefve."}\n{"text": "\\t"}\n')
    code, out, _ = _script("shard_documents", _shard([folder], bpe_tokenizer, tmp_path / "s"), capsys)
    assert code == 0 and "(empty 8)" in out
    names = ", ".join(str(folder / f"{i:02d}-empty.txt") for i in range(5))
    assert f"empty (the first 5): {names}, ..." in out  # in reading order, the first 5 of 8
    invalid = f"invalid UTF-8 (the first 2): {folder / '08-latin1.txt'}, {folder / '09-lines.jsonl'}:2"
    assert invalid in out


def test_a_folder_that_is_not_a_tokenizer_is_called_so(
    tmp_path: Path, synthetic_jsonl: Path, capsys: pytest.CaptureFixture
) -> None:
    model = tmp_path / "bart-model"  # a model's folder: config.json and weights, no tokenizer files
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bart"}')
    (model / "model.safetensors").write_bytes(b"")
    code, _, err = _script("shard_documents", _shard([synthetic_jsonl], model, tmp_path / "s"), capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{model} is a folder but not a tokenizer" in err and "it holds config.json, model.safetensors" in err
    assert "added_tokens" not in err and "install" not in err
