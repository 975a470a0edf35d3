"""Sharding in slices + merge (memformers/data/prep/slices.py; shard_documents.py --num-slices/--slice-index/--merge):
the merged SHARD_DIR is byte-identical to the single-process run; the slice rule; missing, unfinished and other-run
slices; resume; idempotence; slices running at once as separate processes."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import REPO, data_prep_script, varied_texts

from memformers.data import DataError, DocumentReader, read_manifest, shard_documents  # noqa: E402
from memformers.data.prep import writer  # noqa: E402
from memformers.data.prep.slices import IncompleteSlicesError, Part, plan_slices, slice_dir  # noqa: E402
from memformers.data.prep.sources import ReadStats, RecordCheck, Tally  # noqa: E402
from memformers.data.prep.tasks import LineRange, TaskReader, plan_tasks  # noqa: E402

SETTINGS = dict(segment_length=48, val_fraction=0.3, docs_per_shard=7, skip_bad_records=True, workers=0, progress=False)
NO_TOKENS = "#####"  # the test tokenizer deletes '#': a document without any token


def _digests(shards: Path) -> dict[str, str]:
    """sha256 of every file under a SHARD_DIR (tokenizer copy and manifest included)."""
    files = sorted(p for p in shards.rglob("*") if p.is_file())
    return {str(p.relative_to(shards)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _mtimes(shards: Path) -> dict[str, int]:
    return {str(p.relative_to(shards)): p.stat().st_mtime_ns for p in sorted(shards.rglob("*")) if p.is_file()}


def _lines(records: list) -> bytes:
    """JSON lines; bytes items are written as raw lines (malformed or invalid UTF-8 records)."""
    return b"".join(r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def _records(texts: list[str], first_id: int) -> list:
    """Records of `texts` with blank lines, an empty text, a malformed line and invalid UTF-8 mixed in, and at
    the end 14 documents without tokens (so that a whole shard of 7 has none, the split's last one or not)."""
    records: list = [{"id": first_id + i, "text": t} for i, t in enumerate(texts)]
    records[3:3] = [b"\n", {"id": "empty", "text": "  "}, b"{not json\n", b'{"text": "caf\xe9 au lait."}\n']
    return records + [{"id": f"hash{i}", "text": NO_TOKENS} for i in range(14)]


@pytest.fixture(scope="module")
def hash_tokenizer(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer: Path) -> Path:
    """The BPE tokenizer with a normalizer that deletes '#', so that some documents have no token at all."""
    from tokenizers import Tokenizer, normalizers

    out = tmp_path_factory.mktemp("tok") / "hash"
    out.mkdir()
    for path in bpe_tokenizer.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.normalizer = normalizers.Sequence([normalizers.Replace("#", ""), tok.normalizer])
    tok.save(str(out / "tokenizer.json"))
    return out


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory, synthetic_docs: list) -> dict[str, list[str]]:
    """'files': a folder of 6 inputs (.jsonl, .jsonl.gz, .txt, .parquet, a nested .jsonl); 'big': one .jsonl;
    'gz': the same compressed (one input that cannot be cut: the other slices are empty)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("slices-corpus")
    texts = varied_texts(260, seed=3)
    files = root / "files"
    (files / "nested").mkdir(parents=True)
    (files / "a.jsonl").write_bytes(_lines(_records(texts[:40], 0)))
    with gzip.open(files / "b.jsonl.gz", "wb") as f:
        f.write(_lines([{"id": d["id"], "text": d["text"]} for d in synthetic_docs[:30]]))
    (files / "c.txt").write_text(texts[40], encoding="utf-8")
    pq.write_table(pa.table({"text": texts[41:60], "id": list(range(41, 60))}), files / "d.parquet")
    (files / "e.jsonl").write_bytes(_lines([{"text": t} for t in texts[60:64]]))
    (files / "nested" / "f.jsonl").write_bytes(_lines(_records(texts[64:100], 64)))
    big = root / "big.jsonl"
    big.write_bytes(_lines(_records(texts[100:], 100)))
    (root / "big.jsonl.gz").write_bytes(gzip.compress(big.read_bytes(), mtime=0))
    return {"files": [str(files)], "big": [str(big)], "gz": [str(root / "big.jsonl.gz")]}


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory, corpora: dict, hash_tokenizer: Path) -> dict[str, Path]:
    """The single-process SHARD_DIR of each corpus."""
    root = tmp_path_factory.mktemp("slices-reference")
    refs = {}
    for name, inputs in corpora.items():
        refs[name] = root / name
        summary = shard_documents(inputs, hash_tokenizer, refs[name], **SETTINGS)
        assert summary.reconciles and summary.skipped["no_tokens"] >= 14
        assert summary.skipped["bad_record"] >= 1 and summary.invalid_utf8 >= 1
    return refs


def _slice(inputs: list[str], tok: Path, out: Path, count: int, index: int, **extra):
    return shard_documents(inputs, tok, out, **(SETTINGS | extra), num_slices=count, slice_index=index)


def _merge(inputs: list[str], tok: Path, out: Path, count: int, **extra):
    return shard_documents(inputs, tok, out, **(SETTINGS | extra), num_slices=count, merge=True)


def _cli_args(inputs: list[str], tok: Path, out: Path) -> list[str]:
    return ["--input", *inputs, "--tokenizer", str(tok), "--output", str(out), "--segment-length", "48",
            "--val-fraction", "0.3", "--docs-per-shard", "7", "--skip-bad-records", "--workers", "0",
            "--no-progress"]  # fmt: skip


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("corpus", ["files", "big", "gz"])
def test_slices_then_merge_give_the_single_process_shard_dir(
    tmp_path: Path, corpora: dict, references: dict, hash_tokenizer: Path, corpus: str, count: int
) -> None:
    inputs, out = corpora[corpus], tmp_path / "sliced"
    read = []
    for index in range(count):
        summary = _slice(inputs, hash_tokenizer, out, count, index)
        assert summary.reconciles and not (out / "manifest.json").exists() and not (out / "tokenizer").exists()
        assert sorted(os.listdir(out)) == [".slices"]  # a slice writes nothing but its own folder
        read.append(summary.documents_read)
    if count > 1:
        assert all(n > 0 for n in read) == (corpus != "gz")  # the work is spread, but a .gz cannot be cut
        parts = plan_slices(DocumentReader(inputs).sources, count)
        assert any(p.start is not None for ps in parts for p in ps) == (corpus == "big")  # byte ranges iff one file
    merged = _merge(inputs, hash_tokenizer, out, count)
    assert merged.reconciles and merged.documents_read == sum(read) and merged.shards_written > 0

    assert _digests(out) == _digests(references[corpus])  # byte-identical: shards, index.npy, manifest, tokenizer
    assert not (out / ".slices").exists() and not (out / ".progress").exists()
    manifest = read_manifest(out)
    assert manifest["stats"]["skipped"]["no_tokens"] == 14 * (2 if corpus == "files" else 1)
    assert any(s["documents"] == 0 for split in manifest["splits"].values() for s in split["shards"])  # all no-token
    assert data_prep_script("inspect_shards").main([str(out), "--no-progress", "--segments", "0"]) == 0


def _documents(reader: DocumentReader) -> list[tuple[str, str, str | None]]:
    return [(d.source, d.text, d.doc_id) for d in reader]


def _task_documents(parts: list[Part], block: int) -> tuple[list[tuple[str, str, str | None]], ReadStats]:
    """The documents of a slice's parts read as the workers read them: task by task (tasks.py), a byte range's
    lines numbered after the lines of the ranges before it in its file (as the scheduler places them)."""
    check, docs, stats, lines = RecordCheck(skip_bad_records=True), [], ReadStats(), {}
    for task in plan_tasks([p.as_tuple() for p in parts], block):
        reader, tally = TaskReader(task, check, "train", None), Tally()
        file = task.source.location if isinstance(task, LineRange) else None
        offset = lines.get(file, 0)
        docs += [(task.where(offset + d.number, "train"), d.text, d.doc_id) for d in reader.documents(tally)]
        stats.update(ReadStats.of(tally, lambda n: task.where(offset + n, "train")))
        lines[file] = offset + reader.lines
    return docs, stats


def test_slice_rule_partitions_the_document_stream(corpora: dict, tmp_path: Path) -> None:
    """Every document is read by exactly one slice, in reading order, with the same source, text, id and counts,
    however the slices' parts are cut into tasks."""
    extra = tmp_path / "z.txt"
    extra.write_text("A lone document.", encoding="utf-8")
    for inputs in (corpora["big"], corpora["files"], [*corpora["big"], str(extra)]):
        whole = DocumentReader(inputs, skip_bad_records=True)
        expected = _documents(whole)
        for count, block in zip(range(1, 9), (1 << 20, 97, 1000, 331, 4096, 50, 1 << 20, 777)):
            got, read, skipped = [], 0, 0
            for parts in plan_slices(whole.sources, count):
                docs, stats = _task_documents(parts, block)
                got += docs
                read += stats.documents_read
                skipped += sum(stats.skipped.values())
            assert got == expected, (inputs, count)
            assert (read, skipped) == (whole.stats.documents_read, sum(whole.stats.skipped.values()))


def test_slice_rule_whole_inputs_balanced_by_bytes(tmp_path: Path) -> None:
    sizes = [10, 10, 10, 100, 10, 10, 10, 10]
    for i, size in enumerate(sizes):
        (tmp_path / f"{i}.jsonl").write_text("x" * (size - 1) + "\n")
    sources = DocumentReader([str(tmp_path)]).sources
    plans = {n: [[Path(p.source.location).stem for p in ps] for ps in plan_slices(sources, n)] for n in (2, 3, 8)}
    assert plans[2] == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]  # cut nearest to half the bytes (130 of 180 vs 30)
    assert plans[3] == [["0", "1", "2"], ["3"], ["4", "5", "6", "7"]]
    assert plans[8] == [[str(i)] for i in range(8)]
    # fewer inputs than slices: byte ranges of the .jsonl, a compressed file whole in the slice where it begins
    with gzip.open(tmp_path / "z.jsonl.gz", "wb") as f:
        f.write(b'{"text": "a"}\n' * 50)
    sources = DocumentReader([str(tmp_path / "3.jsonl"), str(tmp_path / "z.jsonl.gz")]).sources
    total = 100 + (tmp_path / "z.jsonl.gz").stat().st_size
    b = [i * total // 4 for i in range(5)]
    assert b[2] <= 100 < b[3]
    assert plan_slices(sources, 4) == [
        [Part(sources[0], 0, b[1])], [Part(sources[0], b[1], b[2])], [Part(sources[0], b[2], 100), Part(sources[1])], []
    ]  # fmt: skip


def test_missing_and_unfinished_slices_fail_the_merge_then_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpora: dict, references: dict, hash_tokenizer: Path,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    inputs, out = corpora["big"], tmp_path / "sliced"
    merge = data_prep_script("shard_documents").main
    for index in (0, 2):
        _slice(inputs, hash_tokenizer, out, 3, index)
    assert merge([*_cli_args(inputs, hash_tokenizer, out), "--num-slices", "3", "--merge"]) == 1
    err = capsys.readouterr().err
    assert "1 of 3 slices not ready: slice 1 is missing" in err and "--slice-index" in err

    commit, commits = writer.commit_shard, []

    def interrupted(out, split, shard, *args):  # Ctrl-C after the slice's second shard (workers=0: in this process)
        if len(commits) == 2:
            raise KeyboardInterrupt
        commits.append(out / writer.shard_name(split, shard))
        return commit(out, split, shard, *args)

    monkeypatch.setattr(writer, "commit_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _slice(inputs, hash_tokenizer, out, 3, 1)
    monkeypatch.setattr(writer, "commit_shard", commit)
    assert merge([*_cli_args(inputs, hash_tokenizer, out), "--num-slices", "3", "--merge"]) == 1
    assert f"slice 1 is unfinished (no slice.json in {slice_dir(out, 1)}" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()

    before = {p: p.stat().st_mtime_ns for p in commits}
    resumed = _slice(inputs, hash_tokenizer, out, 3, 1)
    assert resumed.shards_reused == 2 and resumed.shards_written > 0 and resumed.reconciles
    assert {p: p.stat().st_mtime_ns for p in commits} == before  # finished shards of the slice are kept
    assert merge([*_cli_args(inputs, hash_tokenizer, out), "--num-slices", "3", "--merge"]) == 0
    assert "merged from 3 slices" in capsys.readouterr().out
    assert _digests(out) == _digests(references["big"])


def test_reruns_do_nothing(
    tmp_path: Path, corpora: dict, references: dict, hash_tokenizer: Path, capsys: pytest.CaptureFixture
) -> None:
    inputs, out = corpora["files"], tmp_path / "sliced"
    _slice(inputs, hash_tokenizer, out, 2, 0)
    before = _mtimes(out)
    again = _slice(inputs, hash_tokenizer, out, 2, 0)
    assert again.already_complete and "nothing to do" in again.format() and _mtimes(out) == before  # not redone
    _slice(inputs, hash_tokenizer, out, 2, 1)
    _merge(inputs, hash_tokenizer, out, 2)
    merged = _mtimes(out)
    main = data_prep_script("shard_documents").main
    assert main([*_cli_args(inputs, hash_tokenizer, out), "--num-slices", "2", "--merge"]) == 0
    assert "(already complete: nothing to do)" in capsys.readouterr().out
    assert main([*_cli_args(inputs, hash_tokenizer, out), "--num-slices", "2", "--slice-index", "1"]) == 0
    assert "already merged" in capsys.readouterr().out
    assert _mtimes(out) == merged and not (out / ".slices").exists()
    assert _digests(out) == _digests(references["files"])


def test_slices_run_at_once_as_separate_processes(
    tmp_path: Path, corpora: dict, references: dict, hash_tokenizer: Path
) -> None:
    inputs, out, count = corpora["big"], tmp_path / "sliced", 3
    script = [sys.executable, str(REPO / "data_prep" / "shard_documents.py"), *_cli_args(inputs, hash_tokenizer, out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [*script, "--num-slices", str(count), "--slice-index", str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * count, outputs
    assert all(f"slice {i} of {count}" in o for i, (o, _) in enumerate(outputs))
    assert _merge(inputs, hash_tokenizer, out, count, workers=2).reconciles  # merged shards written by 2 workers
    assert _digests(out) == _digests(references["big"])


def test_other_runs_are_refused(
    tmp_path: Path, corpora: dict, references: dict, hash_tokenizer: Path, capsys: pytest.CaptureFixture
) -> None:
    inputs, out = corpora["big"], tmp_path / "sliced"
    _slice(inputs, hash_tokenizer, out, 3, 0)
    with pytest.raises(DataError, match=r"a finished slice 0 of 2 .* different settings \(--num-slices\)"):
        _slice(inputs, hash_tokenizer, out, 2, 0)
    with pytest.raises(DataError, match=r"different settings \(segment_length\)"):
        _slice(inputs, hash_tokenizer, out, 3, 0, segment_length=32)
    other_run = (
        r"slice 0 was made by another run \(--num-slices differ\): re-run it with --overwrite; slice 1 is missing"
    )
    with pytest.raises(IncompleteSlicesError, match=other_run):
        _merge(inputs, hash_tokenizer, out, 2)
    with pytest.raises(DataError, match=r"holds the slices of an unfinished sliced run"):  # a single run would mix them
        shard_documents(inputs, hash_tokenizer, out, **SETTINGS)
    for index in (0, 1):
        _slice(inputs, hash_tokenizer, out, 2, index, overwrite=True)
    _merge(inputs, hash_tokenizer, out, 2)
    assert _digests(out) == _digests(references["big"])
    with pytest.raises(DataError, match=r"finished shard set made with different settings \(docs_per_shard\)"):
        _slice(inputs, hash_tokenizer, out, 2, 0, docs_per_shard=5)

    main = data_prep_script("shard_documents").main
    with pytest.raises(SystemExit) as exit_:
        main([*_cli_args(inputs, hash_tokenizer, out), "--merge"])
    assert exit_.value.code == 2 and "--slice-index and --merge need --num-slices N" in capsys.readouterr().err
    assert main([*_cli_args(inputs, hash_tokenizer, out), "--num-slices", "2", "--slice-index", "2"]) == 2
    assert "--slice-index must be in [0, 1]" in capsys.readouterr().err
    assert "--num-slices" in subprocess.run([sys.executable, str(REPO / "data_prep" / "shard_documents.py"), "--help"],
                                            capture_output=True, text=True).stdout  # fmt: skip
