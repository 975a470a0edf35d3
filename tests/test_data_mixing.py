"""Whether several SHARD_DIRs can be mixed (`memformers.data.mixing_problems`, `inspect_shards.py A B ...`).

Small real corpora sharded with the shipped `data_prep/shard_documents.py`: two corpora with the same tokenizer
and segment length (mixable), one with another tokenizer and one with another segment length (not mixable).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from data_fixtures import data_prep_script, varied_texts

from memformers.data import DataError, check_mixable, mixing_problems, read_manifest

LENGTH = 64
DOCS = 30


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpora(
    tmp_path_factory: pytest.TempPathFactory,
    synthetic_docs: list[dict[str, Any]],
    bpe_tokenizer: Path,
    unigram_tokenizer: Path,
) -> dict[str, Path]:
    """SHARD_DIRs "recall" and "varied" (BPE, 64), "unigram" (another tokenizer), "short" (BPE, 32)."""
    root = tmp_path_factory.mktemp("mixing")
    recall = _jsonl(root / "recall.jsonl", synthetic_docs[:DOCS])
    varied = _jsonl(root / "varied.jsonl", [{"id": i, "text": t} for i, t in enumerate(varied_texts(DOCS, seed=1))])
    shard = data_prep_script("shard_documents").main
    made = {}
    for name, corpus, tokenizer, length in (
        ("recall", recall, bpe_tokenizer, LENGTH),
        ("varied", varied, bpe_tokenizer, LENGTH),
        ("unigram", varied, unigram_tokenizer, LENGTH),
        ("short", varied, bpe_tokenizer, 32),
    ):
        out = root / name
        argv = ["--input", str(corpus), "--tokenizer", str(tokenizer), "--output", str(out)]
        argv += ["--segment-length", str(length), "--workers", "0", "--val-fraction", "0.2", "--no-progress"]
        assert shard([*argv, "--docs-per-shard", "8"]) == 0, name
        made[name] = out
    return made


def _inspect(capsys: pytest.CaptureFixture, *args: str | Path) -> tuple[int, str, str]:
    code = data_prep_script("inspect_shards").main([*map(str, args), "--no-progress", "--segments", "0"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _source(name: str, path: Path) -> tuple[str, Path, dict[str, Any]]:
    return name, path, read_manifest(path)


def test_same_tokenizer_and_segment_length_mix(corpora: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _inspect(capsys, corpora["recall"], corpora["varied"])
    assert code == 0, out
    sha = read_manifest(corpora["recall"])["tokenizer"]["sha256"]
    assert f"these 2 corpora can be mixed: tokenizer {sha[:12]}, segment length {LENGTH}" in out
    assert f"=== {corpora['recall']} (1 of 2) ===" in out and f"=== {corpora['varied']} (2 of 2) ===" in out
    assert out.count("all shards verified against manifest.json") == 2
    sources = [_source("recall", corpora["recall"]), _source("varied", corpora["varied"])]
    assert mixing_problems(sources) == []
    check_mixable(sources)


def test_different_tokenizers_do_not_mix(corpora: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _inspect(capsys, corpora["recall"], corpora["unigram"])
    assert code == 2
    verdict = out.split("cannot be mixed:", 1)[1]
    assert "tokenizer" in verdict and str(corpora["recall"]) in verdict and str(corpora["unigram"]) in verdict
    vocab = [read_manifest(corpora[name])["tokenizer"]["vocab_size"] for name in ("unigram", "recall")]
    assert f"--tokenizer {corpora['recall']}" in verdict and f"vocab_size {vocab[0]} vs {vocab[1]}" in verdict
    problems = mixing_problems([_source("recall", corpora["recall"]), _source("books", corpora["unigram"])])
    assert len(problems) == 1
    assert f"source 'books' ({corpora['unigram']})" in problems[0]
    assert f"source 'recall' ({corpora['recall']})" in problems[0]


def test_different_segment_lengths_do_not_mix(corpora: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _inspect(capsys, corpora["recall"], corpora["short"])
    assert code == 2
    (problem,) = [line for line in out.splitlines() if "has segment length 32 but" in line]
    assert str(corpora["recall"]) in problem and str(corpora["short"]) in problem
    assert f"but {corpora['recall']} has {LENGTH}" in problem and f"--segment-length {LENGTH}" in problem
    assert "tokenizer" not in problem


def test_check_mixable_raises_with_every_problem(corpora: dict[str, Path]) -> None:
    sources = [_source(name, corpora[name]) for name in ("recall", "unigram", "short")]
    with pytest.raises(DataError, match="cannot be mixed \\(2 problems\\)") as error:
        check_mixable(sources)
    message = str(error.value)
    assert "different tokenizers" in message and "segment length 32" in message
    assert all(f"'{name}' ({corpora[name]})" in message for name in ("recall", "unigram", "short"))


def test_duplicate_names_and_directories(
    tmp_path: Path, corpora: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    recall, varied = corpora["recall"], corpora["varied"]
    (problem,) = mixing_problems([_source("web", recall), _source("web", varied)])
    assert "same name 'web'" in problem and "distinct `name`s" in problem
    assert str(recall) in problem and str(varied) in problem
    link = tmp_path / "link"
    link.symlink_to(recall, target_is_directory=True)
    (problem,) = mixing_problems([_source("a", recall), _source("b", link)])
    assert "lists the same SHARD_DIR" in problem and str(link) in problem and str(recall) in problem
    code, out, _ = _inspect(capsys, recall, recall)
    assert code == 2 and "lists the same SHARD_DIR" in out


def test_storage_width_does_not_matter(corpora: dict[str, Path]) -> None:
    wide = read_manifest(corpora["varied"]) | {"token_dtype": "uint32"}
    assert mixing_problems([_source("recall", corpora["recall"]), ("wide", corpora["varied"], wide)]) == []
    assert mixing_problems([]) == [] and mixing_problems([_source("recall", corpora["recall"])]) == []


def test_json_with_several_dirs(corpora: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _inspect(capsys, corpora["recall"], corpora["varied"], "--json")
    report = json.loads(out)
    assert code == 0 and report["mixable"] is True and report["problems"] == []
    assert set(report["corpora"]) == {str(corpora["recall"]), str(corpora["varied"])}
    assert all(c["ok"] and "train" in c["splits"] for c in report["corpora"].values())
    code, out, _ = _inspect(capsys, corpora["recall"], corpora["short"], "--json")
    report = json.loads(out)
    assert code == 2 and report["mixable"] is False and len(report["problems"]) == 1


def test_one_dir_is_inspected_as_before(corpora: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _inspect(capsys, corpora["recall"])
    assert code == 0 and out.startswith(f"shard directory: {corpora['recall']}\n")
    assert "all shards verified against manifest.json" in out
    assert "mixed" not in out and "===" not in out
    code, out, _ = _inspect(capsys, corpora["recall"], "--json")
    assert code == 0 and set(json.loads(out)) == {"ok", "splits", "bad_shards"}


def test_damaged_dirs_keep_their_exit_codes(
    tmp_path: Path, corpora: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    """An unreadable dir exits 2 and a bad shard 1, and the verdict still covers the manifests that were read."""
    missing = tmp_path / "not_shards"
    missing.mkdir()
    code, out, err = _inspect(capsys, corpora["recall"], missing, corpora["varied"])
    assert code == 2 and f"error: {missing} is not a shard directory" in err
    assert "1 of 3 directories could not be read" in out and "these 2 corpora can be mixed" in out
    code, out, _ = _inspect(capsys, corpora["recall"], missing, "--json")
    report = json.loads(out)
    assert report["mixable"] is False and report["corpora"][str(missing)]["ok"] is False

    broken = tmp_path / "broken"
    shutil.copytree(corpora["varied"], broken)
    shard = read_manifest(broken)["splits"]["train"]["shards"][0]["path"]
    (broken / shard).write_bytes((broken / shard).read_bytes()[:1000])
    code, out, err = _inspect(capsys, corpora["recall"], broken)
    assert code == 1 and f"BAD {shard}:" in err and "these 2 corpora can be mixed" in out
