"""Session fixtures shared by the engine, export and Slurm tests: a tiny real corpus, tokenizer and SHARD_DIR,
built once with the shipped `data_prep/` scripts.

The data tests' fixtures come from the plugin tests/data_fixtures.py. Helper modules (tests/launch.py,
tests/slurm_cluster.py, ...) are importable by name through `pythonpath` in pyproject.toml's pytest options."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from launch import run

pytest_plugins = ["data_fixtures"]

# The tiny models gain nothing from a second intra-op thread, and tests run several processes on few cores:
# OpenMP threads spinning against each other make in-process torch many times slower (`make test` also sets
# OMP_NUM_THREADS=1 for the subprocesses).
torch.set_num_threads(1)

SEGMENT_LENGTH = 48


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """A SHARD_DIR of the synthetic recall corpus: 48-token segments, a 600-piece tokenizer, train and val."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    corpus, tokenizer, shards = root / "corpus.jsonl", root / "tokenizer", root / "shards"
    py = sys.executable
    run([py, "data_prep/make_synthetic.py", "--output", str(corpus), "--num-docs", "80", "--seed", "0"])
    run([py, "data_prep/train_tokenizer.py", "--input", str(corpus), "--vocab-size", "600", "--output", str(tokenizer)])
    shard = [py, "data_prep/shard_documents.py", "--input", str(corpus), "--tokenizer", str(tokenizer)]
    run([*shard, "--output", str(shards), "--segment-length", str(SEGMENT_LENGTH), "--val-fraction", "0.15",
         "--docs-per-shard", "16"])  # fmt: skip
    return shards


@pytest.fixture(scope="session")
def second_shards(tiny_shards) -> Path:
    """A second SHARD_DIR with tiny_shards' tokenizer and segment length (another synthetic corpus, 40 documents):
    the other source of a mixture."""
    root = tiny_shards.parent
    corpus, shards = root / "second.jsonl", root / "second-shards"
    py = sys.executable
    run([py, "data_prep/make_synthetic.py", "--output", str(corpus), "--num-docs", "40", "--seed", "7"])
    run([py, "data_prep/shard_documents.py", "--input", str(corpus), "--tokenizer", str(root / "tokenizer"),
         "--output", str(shards), "--segment-length", str(SEGMENT_LENGTH), "--val-fraction", "0.2",
         "--docs-per-shard", "16"])  # fmt: skip
    return shards


def tiny_run_args(run_dir: Path, shards: Path, *extra: str) -> list[str]:
    """`pretrain/train.py` arguments for a quick tiny run (a few seconds per step budget on 2 cores)."""
    return [
        "--config", "pretrain/configs/tiny.yaml", f"run_dir={run_dir}", f"data.path={shards}", "data.lanes=2",
        "train.time_horizon=2", "train.warmup_steps=2", "eval.max_batches=3", "logging.wandb=disabled",
        "logging.progress_bar=false", *extra,
    ]  # fmt: skip
