"""Sharding: round trip, manifest, determinism, resume, split stability, verification (data_prep/)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import DOCS_PER_SHARD, REPO, SEGMENT_LENGTH, data_prep_script, varied_texts

from memformers.data import (  # noqa: E402
    DataError,
    ShardError,
    SplitReader,
    check_shard_dir,
    load_tokenizer,
    read_manifest,
    sentence_end_table,
    shard_documents,
    split_of,
)
from memformers.data.prep import writer  # noqa: E402


def _all_documents(shards: Path) -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
    """source → (ids, segment ends, meta) of every document of every split."""
    out = {}
    for split in read_manifest(shards)["splits"]:
        reader = SplitReader(shards, split)
        for i in range(len(reader)):
            sample = reader.read(i)
            meta = json.loads(sample.meta)
            out[meta["source"]] = (
                np.array(sample.ids),
                np.array(sample.ends),
                meta | {"key": sample.key, "split": split},
            )
        reader.close()
    return out


def _file_digests(shards: Path) -> dict[str, str]:
    return {
        str(p.relative_to(shards)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(shards.rglob("*"))
        if p.is_file() and "tokenizer" not in p.parts
    }


def test_round_trip_reproduces_every_document(shard_dir: Path, synthetic_jsonl: Path, varied_jsonl: Path) -> None:
    tokenizer = load_tokenizer(shard_dir)
    backend = tokenizer.backend_tokenizer
    backend.encode_special_tokens = True
    table = sentence_end_table(tokenizer)
    stored = _all_documents(shard_dir)
    count = 0
    for path in (synthetic_jsonl, varied_jsonl):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            record = json.loads(line)
            ids, ends, meta = stored[f"{path}:{lineno}"]
            expected = backend.encode(record["text"], add_special_tokens=False).ids
            assert ids.tolist() == expected
            assert tokenizer.decode(ids.tolist()) == record["text"]
            assert meta["id"] == str(record["id"])
            assert meta["split"] == split_of(record["text"].encode(), 0.2)
            lengths = np.diff(ends, prepend=0)
            assert ends[-1] == ids.size and lengths.min() >= 1 and lengths.max() <= SEGMENT_LENGTH
            # every cut but the last is at a sentence end, or a hard cut of a full window
            for end, length in zip(ends[:-1].tolist(), lengths[:-1].tolist()):
                assert table[ids[end - 1]] or length == SEGMENT_LENGTH
            count += 1
    assert count == len(stored)


def test_manifest_schema_and_counts(shard_dir: Path) -> None:
    manifest = read_manifest(shard_dir)
    assert manifest["segment_length"] == SEGMENT_LENGTH and manifest["token_dtype"] == "uint16"
    tok = manifest["tokenizer"]
    assert tok["special_ids"] == {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 4}
    assert tok["vocab_size"] == len(load_tokenizer(shard_dir)) and len(tok["sha256"]) == 64 and tok["name"]
    assert set(manifest["splits"]) == {"train", "val"}
    stats = manifest["stats"]
    assert stats["documents_read"] == stats["documents_written"] + sum(stats["skipped"].values())
    total = 0
    for split, entry in manifest["splits"].items():
        assert len(entry["shards"]) == -(-entry["documents"] // DOCS_PER_SHARD)
        for number, shard in enumerate(entry["shards"]):
            path = shard_dir / shard["path"]
            assert shard["path"] == f"{split}/shard-{number:06d}.tar"
            assert (
                hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
                and path.stat().st_size == shard["bytes"]
            )
        assert sum(s["documents"] for s in entry["shards"]) == entry["documents"]
        assert sum(s["segments"] for s in entry["shards"]) == entry["segments"]
        assert sum(s["tokens"] for s in entry["shards"]) == entry["tokens"]
        total += entry["documents"]
    assert total == stats["documents_written"]
    assert (shard_dir / "tokenizer" / "tokenizer.json").is_file() and not (shard_dir / ".progress").exists()


def test_shards_are_plain_webdataset_tars(shard_dir: Path) -> None:
    import webdataset as wds

    entry = read_manifest(shard_dir)["splits"]["train"]["shards"][0]
    samples = list(wds.WebDataset(str(shard_dir / entry["path"]), shardshuffle=False).decode())
    assert len(samples) == entry["documents"]
    reader = SplitReader(shard_dir, "train")
    for i, sample in enumerate(samples):
        stored = reader.read(i)
        assert sample["__key__"] == stored.key
        assert np.array_equal(sample["ids.npy"], stored.ids) and np.array_equal(sample["seg.npy"], stored.ends)
        assert set(sample["json"]) == {"id", "source"}


def test_identical_bytes_whatever_the_number_of_workers(
    tmp_path: Path, synthetic_jsonl: Path, varied_jsonl: Path, bpe_tokenizer: Path
) -> None:
    digests = []
    for workers in (0, 1, 2):
        out = tmp_path / f"w{workers}"
        shard_documents(
            [str(synthetic_jsonl), str(varied_jsonl)], bpe_tokenizer, out, SEGMENT_LENGTH,
            workers=workers, val_fraction=0.2, docs_per_shard=DOCS_PER_SHARD, progress=False, block_bytes=20_000,
        )  # fmt: skip
        digests.append(_file_digests(out))
    assert digests[0] == digests[1] == digests[2]
    assert "manifest.json" in digests[0] and "train/index.npy" in digests[0]


def test_a_run_killed_with_sigkill_reuses_its_shards_and_ends_as_an_uninterrupted_run(
    tmp_path: Path, bpe_tokenizer: Path
) -> None:
    """`kill -9` of a real run with 2 workers: the workers exit on their own; the same command again keeps every
    shard the killed run recorded (verified by sha256, not rewritten), writes the rest, and the SHARD_DIR is
    byte-identical to one written without interruption."""
    corpus = tmp_path / "corpus.jsonl"
    texts = varied_texts(1200, seed=11)
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "data_prep" / "shard_documents.py"), "--input", str(corpus),
               "--tokenizer", str(bpe_tokenizer), "--output", str(out), "--segment-length", str(SEGMENT_LENGTH),
               "--val-fraction", "0.2", "--docs-per-shard", str(DOCS_PER_SHARD), "--block-bytes", "20000",
               "--workers", "2", "--no-progress"]  # fmt: skip
    killed = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = lambda: sorted((out / ".progress").glob("*-*.json"))  # noqa: E731  (one per finished shard)
    deadline = time.monotonic() + 120
    while len(records()) < 8:
        assert killed.poll() is None, f"the run ended before it was killed: {killed.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    kept = {out / json.loads(p.read_text())["path"] for p in records()}
    mtimes = {p: p.stat().st_mtime_ns for p in kept}
    while time.monotonic() < deadline:  # its workers notice that it is gone and exit
        try:
            os.killpg(killed.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the killed run's workers did not exit")
    assert not (out / "manifest.json").exists()

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    reused = int(re.search(r"reused from an earlier run ([\d,]+)", rerun.stdout)[1])
    assert reused >= len(kept) and {p: p.stat().st_mtime_ns for p in kept} == mtimes  # kept, not rewritten
    reference = tmp_path / "reference"
    kwargs = dict(segment_length=SEGMENT_LENGTH, val_fraction=0.2, docs_per_shard=DOCS_PER_SHARD, progress=False)
    shard_documents([str(corpus)], bpe_tokenizer, reference, workers=1, **kwargs)
    assert _file_digests(out) == _file_digests(reference)

    again = shard_documents([str(corpus)], bpe_tokenizer, out, **kwargs)
    assert again.already_complete and again.shards_written == 0 and "nothing to do" in again.format()
    with pytest.raises(DataError, match=r"finished shard set made with different settings \(docs_per_shard\)"):
        shard_documents([str(corpus)], bpe_tokenizer, out, **(kwargs | {"docs_per_shard": 5}))


def test_an_unfinished_run_with_other_settings_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic_jsonl: Path, bpe_tokenizer: Path
) -> None:
    args = ([str(synthetic_jsonl)], bpe_tokenizer)
    kwargs = dict(segment_length=SEGMENT_LENGTH, workers=0, val_fraction=0.2, docs_per_shard=DOCS_PER_SHARD)
    commit = writer.commit_shard

    def interrupted(*args):  # Ctrl-C at the second shard (workers=0: in this process)
        if len(list((out / ".progress").glob("*-*.json"))) == 1:
            raise KeyboardInterrupt
        return commit(*args)

    out = tmp_path / "out"
    monkeypatch.setattr(writer, "commit_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        shard_documents(*args, out, progress=False, **kwargs)
    monkeypatch.setattr(writer, "commit_shard", commit)
    with pytest.raises(DataError, match=r"unfinished run made with different settings \(segment_length\)"):
        shard_documents(*args, out, progress=False, **(kwargs | {"segment_length": 32}))
    replaced = shard_documents(*args, out, progress=False, overwrite=True, **(kwargs | {"docs_per_shard": 5}))
    assert not replaced.already_complete and replaced.shards_reused == 0
    assert len(read_manifest(out)["splits"]["train"]["shards"]) > 3


def test_output_folder_with_other_files_is_refused(tmp_path: Path, synthetic_jsonl: Path, bpe_tokenizer: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty and not a shard directory"):
        shard_documents([str(synthetic_jsonl)], bpe_tokenizer, tmp_path, SEGMENT_LENGTH, workers=0, progress=False)


def test_split_is_a_stable_function_of_the_content(
    tmp_path: Path, synthetic_docs: list, bpe_tokenizer: Path, shard_dir: Path
) -> None:
    docs = [d["text"] for d in synthetic_docs]
    mixed = docs[40:] + [f"An extra document number {i}." for i in range(30)]
    random.Random(1).shuffle(mixed)
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in mixed))
    out = tmp_path / "out"
    shard_documents([str(path)], bpe_tokenizer, out, SEGMENT_LENGTH, workers=1, val_fraction=0.2, progress=False)
    tokenizer = load_tokenizer(out)
    side = {tokenizer.decode(ids.tolist()): meta["split"] for ids, _, meta in _all_documents(out).values()}
    original = {tokenizer.decode(ids.tolist()): meta["split"] for ids, _, meta in _all_documents(shard_dir).values()}
    for text in docs[40:]:
        assert side[text] == original[text]
    assert set(side.values()) == {"train", "val"}


def test_inspect_shards_reports_statistics(shard_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert data_prep_script("inspect_shards").main([str(shard_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert (
        "train:" in out and "val:" in out and "segment length (tokens)" in out and "document length (segments)" in out
    )
    assert "[segment 0," in out and "all shards verified" in out


def test_truncated_or_altered_shards_are_named(tmp_path: Path, shard_dir: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    from memformers.data import SegmentStreamLoader

    broken = tmp_path / "broken"
    shutil.copytree(shard_dir, broken)
    manifest = read_manifest(broken)
    truncated = manifest["splits"]["train"]["shards"][1]["path"]
    altered = manifest["splits"]["train"]["shards"][2]["path"]
    data = (broken / truncated).read_bytes()
    (broken / truncated).write_bytes(data[: len(data) // 2])
    index = SplitReader(shard_dir, "train").index
    row = index[index["shard"] == 2][0]
    data = bytearray((broken / altered).read_bytes())
    data[int(row["offset"]) + 600] ^= 0xFF  # a token id byte of the shard's first sample
    (broken / altered).write_bytes(bytes(data))

    assert data_prep_script("inspect_shards").main([str(broken), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"BAD {truncated}:" in err and f"BAD {altered}:" in err and "sha256" in err
    assert f"2 of {sum(len(e['shards']) for e in manifest['splits'].values())} shards bad" in err
    result = check_shard_dir(broken)
    assert {c.path for c in result.bad_shards} == {truncated, altered}

    with pytest.raises(ShardError, match=truncated) as error:
        SegmentStreamLoader(broken, "train", lanes=2, segment_length=SEGMENT_LENGTH)
    assert error.value.shards == [truncated]
    (broken / truncated).write_bytes((shard_dir / truncated).read_bytes())
    loader = SegmentStreamLoader(broken, "train", lanes=2, segment_length=SEGMENT_LENGTH)
    reported = [bad for batch in loader for bad in batch["bad_documents"]]  # skipped, not raised: padding instead
    assert [bad["document"] for bad in reported] == [int(np.flatnonzero(index["shard"] == 2)[0])]
    assert (
        f"{altered}: document" in reported[0]["description"]
        and "does not match its checksum" in reported[0]["description"]
    )


def test_scripts_run_from_the_command_line(
    tmp_path: Path, synthetic_jsonl: Path, bpe_tokenizer: Path, capsys: pytest.CaptureFixture
) -> None:
    tok = tmp_path / "tok"
    assert (
        data_prep_script("train_tokenizer").main(
            ["--input", str(synthetic_jsonl), "--vocab-size", "400", "--output", str(tok), "--no-progress"]
        )
        == 0
    )
    assert "special ids        {'bos': 0, 'pad': 1, 'eos': 2, 'unk': 3, 'mask': 4}" in capsys.readouterr().out
    out = tmp_path / "shards"
    base = [
        "--input",
        str(synthetic_jsonl),
        "--tokenizer",
        str(tok),
        "--output",
        str(out),
        "--workers",
        "1",
        "--no-progress",
    ]
    shard = data_prep_script("shard_documents").main
    assert shard([*base, "--segment-length", "48"]) == 0
    assert "reconciles: read = written + skipped" in capsys.readouterr().out
    assert shard([*base, "--segment-length", "48"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert shard([*base, "--segment-length", "32"]) == 2
    assert "error:" in capsys.readouterr().err


def test_sample_encoding_matches_the_standard_formats() -> None:
    import io
    import tarfile

    from memformers.data.format.samples import (
        decode_sample,
        encode_sample,
        encode_sample_bytes,
        npy_bytes,
        sample_meta,
        tar_header,
        tar_trailer,
    )

    for array in (np.arange(5, dtype="<u2"), np.zeros(0, dtype="<u4"), np.array([1, 70000], dtype="<u4")):
        buffer = io.BytesIO()
        np.save(buffer, array)
        assert npy_bytes(array) == buffer.getvalue()
    for name, size in (("k.ids.npy", 0), ("train-000001-000002.seg.npy", 123456)):
        info = tarfile.TarInfo.frombuf(tar_header(name, size), "utf-8", "strict")  # checks the checksum
        assert (info.name, info.size, info.mode, info.mtime, info.isfile()) == (name, size, 0o644, 0, True)
    ids, ends = np.arange(10, dtype="<u2"), np.array([4, 10], dtype="<u4")
    sample = encode_sample("val-000000-000003", ids, ends, {"id": "x", "source": "f.jsonl:3"})
    archive = sample + tar_trailer(len(sample))
    assert len(archive) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getnames() == ["val-000000-000003.ids.npy", "val-000000-000003.seg.npy", "val-000000-000003.json"]
    decoded = decode_sample(sample, "x.tar")
    assert (
        decoded.key == "val-000000-000003" and decoded.ids.tolist() == ids.tolist() and decoded.ends.tolist() == [4, 10]
    )
    with pytest.raises(ShardError, match="x.tar: undecodable sample"):
        decode_sample(sample[:700], "x.tar")
    # the workers' encoder (bytes in) writes the same bytes, whatever the dtype, lengths, id and source
    rng = np.random.default_rng(0)
    for n, dtype, doc_id, source in ((0, "<u2", None, "a.jsonl:1"), (700, "<u4", 'q"', "caf\u00e9/\u6771.jsonl#3")):
        ids, ends = rng.integers(0, 60000, n).astype(dtype), np.array([n] * bool(n), dtype="<u4")
        for key in ("train-000001-000002", "val-1234567-000000"):
            expected = encode_sample(key, ids, ends, {"id": doc_id, "source": source})
            got = encode_sample_bytes(key.encode(), ids.tobytes(), dtype, ends.tobytes(), sample_meta(doc_id, source))
            assert got == expected


def test_statistics_from_histograms_match_plain_percentiles() -> None:
    from memformers.data.prep.verify import distribution, histogram_distribution

    rng = np.random.default_rng(0)
    for size in (1, 2, 5, 100, 1001):
        values = rng.integers(1, SEGMENT_LENGTH + 1, size=size)
        assert histogram_distribution(np.bincount(values, minlength=SEGMENT_LENGTH + 1)) == pytest.approx(
            distribution(values)
        )
