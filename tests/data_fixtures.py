"""Session fixtures of the data tests (tests/test_data_*.py): generated corpora, tokenizers trained on
them in the test session, and a SHARD_DIR. Nothing is downloaded.

A pytest plugin: tests/conftest.py loads it (`pytest_plugins`), so every test module can ask for these
fixtures by name; constants and helpers (REPO, SEGMENT_LENGTH, data_prep_script, ...) are imported by name
(`from data_fixtures import SEGMENT_LENGTH`: tests/ is on pytest's `pythonpath`). Each artefact is built once
per test process (cached here).
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from memformers.data import shard_documents, train_tokenizer
from memformers.recall import SyntheticConfig, generate_documents

REPO = Path(__file__).resolve().parents[1]
SEGMENT_LENGTH = 64
NUM_SYNTHETIC_DOCS = 120
DOCS_PER_SHARD = 16
VAL_FRACTION = 0.2

_CACHE: dict[str, Any] = {}


def _once(name: str, build: Callable[[], Any]) -> Any:
    if name not in _CACHE:
        _CACHE[name] = build()
    return _CACHE[name]


def data_prep_script(name: str):
    """A data_prep script as a module, to call its main(argv) in this process (its `_cli` import is found through
    data_prep/ on pytest's `pythonpath`)."""
    spec = importlib.util.spec_from_file_location(f"data_prep_{name}", REPO / "data_prep" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def varied_texts(count: int, seed: int = 0) -> list[str]:
    """Documents with varied words, punctuation, digits, whitespace and non-ASCII text."""
    rng = random.Random(seed)
    words = (
        "the a memory model reads long documents segment by segment and keeps what matters in its slots "
        "while older context fades unless it is useful later on for answering questions about facts"
    ).split()
    extras = [
        "café", "naïve", "Zürich", "東京", "データ", "😀", "—", "«quote»", "x²", "Ωmega", "\t", "3.14", "1,024", "<s>",
        "<mask>", "<0x41>",
    ]  # fmt: skip
    docs = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.randint(3, 25)):
            sentence = " ".join(
                rng.choice(words) if rng.random() > 0.1 else rng.choice(extras) for _ in range(rng.randint(3, 18))
            )
            sentences.append(sentence.capitalize() + rng.choice([".", ".", "!", "?", '."', ";", ""]))
        docs.append(rng.choice([" ", "  ", "\n", "\n\n"]).join(sentences))
    return docs


@pytest.fixture(scope="session")
def synthetic_docs() -> list[dict[str, Any]]:
    """The synthetic corpus's records (seed 0)."""
    return _once("synthetic_docs", lambda: list(generate_documents(NUM_SYNTHETIC_DOCS, SyntheticConfig(seed=0))))


@pytest.fixture(scope="session")
def synthetic_jsonl(tmp_path_factory: pytest.TempPathFactory, synthetic_docs: list[dict[str, Any]]) -> Path:
    """The synthetic corpus as a JSON lines file."""

    def build() -> Path:
        path = tmp_path_factory.mktemp("corpus") / "synthetic.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in synthetic_docs), encoding="utf-8")
        return path

    return _once("synthetic_jsonl", build)


@pytest.fixture(scope="session")
def varied_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Varied text (non-ASCII, tabs, special-token look-alikes) as a JSON lines file."""

    def build() -> Path:
        path = tmp_path_factory.mktemp("corpus") / "varied.jsonl"
        path.write_text(
            "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(varied_texts(150))), encoding="utf-8"
        )
        return path

    return _once("varied_jsonl", build)


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory: pytest.TempPathFactory, synthetic_jsonl: Path, varied_jsonl: Path) -> Path:
    """A BPE tokenizer directory (vocab 800) trained on both corpora."""

    def build() -> Path:
        out = tmp_path_factory.mktemp("tok") / "bpe"
        train_tokenizer([str(synthetic_jsonl), str(varied_jsonl)], out, 800, model_type="bpe", progress=False)
        return out

    return _once("bpe_tokenizer", build)


@pytest.fixture(scope="session")
def unigram_tokenizer(tmp_path_factory: pytest.TempPathFactory, varied_jsonl: Path) -> Path:
    """A unigram tokenizer directory (vocab 500) trained on the varied corpus."""

    def build() -> Path:
        out = tmp_path_factory.mktemp("tok") / "unigram"
        train_tokenizer([str(varied_jsonl)], out, 500, model_type="unigram", progress=False)
        return out

    return _once("unigram_tokenizer", build)


@pytest.fixture(scope="session")
def shard_dir(
    tmp_path_factory: pytest.TempPathFactory, synthetic_jsonl: Path, varied_jsonl: Path, bpe_tokenizer: Path
) -> Path:
    """Both corpora sharded with the BPE tokenizer: segments of 64, 20% val, 16 documents per shard."""

    def build() -> Path:
        out = tmp_path_factory.mktemp("shards") / "shards"
        shard_documents(
            [str(synthetic_jsonl), str(varied_jsonl)],
            bpe_tokenizer,
            out,
            SEGMENT_LENGTH,
            workers=1,
            val_fraction=VAL_FRACTION,
            docs_per_shard=DOCS_PER_SHARD,
            progress=False,
        )
        return out

    return _once("shard_dir", build)


def hub_cache(root: Path, repo_id: str, files: Path, revision: str = "0123456789abcdef") -> Path:
    """A Hugging Face hub cache folder (what HF_HUB_CACHE names) holding `files`'s files as the main revision of
    the model repository `repo_id`, laid out as huggingface_hub lays it out: models--ORG--NAME/snapshots/REV/...,
    refs/main naming REV. Several calls with the same `root` add repositories to one cache."""
    import shutil

    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(files, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return root / "hub"


def offline_env(cache: Path) -> dict[str, str]:
    """The environment of a subprocess that reads the hub cache `cache` and may not reach the hub."""
    import os

    return dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
