"""Session fixtures shared by the engine, export and Slurm tests: a tiny real corpus, tokenizer and SHARD_DIR,
built once with the shipped `data_prep/` scripts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# The tiny models gain nothing from a second intra-op thread, and tests run several processes on few cores:
# OpenMP threads spinning against each other make in-process torch many times slower (`make test` also sets
# OMP_NUM_THREADS=1 for the subprocesses).
torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).parent))  # tests/launch.py and friends

from launch import run  # noqa: E402

SEGMENT_LENGTH = 48


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """A SHARD_DIR of the synthetic recall corpus: 48-token segments, a 600-piece tokenizer, train and val."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    py = sys.executable
    run([py, "data_prep/make_synthetic.py", "--output", str(root / "corpus.jsonl"), "--num-docs", "80",
         "--seed", "0"])
    run([py, "data_prep/train_tokenizer.py", "--input", str(root / "corpus.jsonl"), "--vocab-size", "600",
         "--output", str(root / "tokenizer")])
    run([py, "data_prep/shard_documents.py", "--input", str(root / "corpus.jsonl"), "--tokenizer",
         str(root / "tokenizer"), "--output", str(root / "shards"), "--segment-length", str(SEGMENT_LENGTH),
         "--val-fraction", "0.15", "--docs-per-shard", "16"])
    return root / "shards"


def tiny_run_args(run_dir: Path, shards: Path, *extra: str) -> list[str]:
    """`pretrain/train.py` arguments for a quick tiny run (a few seconds per step budget on 2 cores)."""
    return ["--config", "pretrain/configs/tiny.yaml", f"run_dir={run_dir}", f"data.path={shards}",
            "data.lanes=2", "train.time_horizon=2", "train.warmup_steps=2", "eval.max_batches=3",
            "logging.wandb=disabled", "logging.progress_bar=false", *extra]
