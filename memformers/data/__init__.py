"""memformers.data: long documents → ordered segment streams (webdataset shards) and the stream loader.

Knows nothing of the model. The pieces:

* `train_tokenizer` (tokenizer_training.py) — a byte-fallback SentencePiece tokenizer saved as a HF
  tokenizer directory with BART's special ids.
* `shard_documents` (sharding.py) — documents (sources.py) → token ids → segments (segmenting.py) →
  webdataset shards (shardio.py) + manifest.json (manifest.py); parallel, deterministic, resumable.
* `check_shard_dir` (verify.py) — verifies a SHARD_DIR against its manifest; corpus statistics.
* `SegmentStreamLoader` (loader.py) — batches of one segment per lane, per rank, resumable, its
  schedule in schedule.py (pure).
* `load_tokenizer`, `read_manifest` — what the engine and evaluation read a SHARD_DIR with.
* synthetic.py — a corpus whose facts can only be recalled with memory.

The command-line scripts are in `data_prep/`.
"""
from typing import TYPE_CHECKING, Any

from .errors import BadRecordError, DataError, ManifestError, ShardError, TokenizerError
from .manifest import INDEX_DTYPE, is_shard_dir, read_manifest
from .schedule import EpochPlan, assign_lanes, epoch_order, plan_epoch
from .segmenting import segment_ends
from .sharding import ShardingSummary, shard_documents, split_of
from .shardio import Sample, SplitReader
from .sources import Document, DocumentReader, ReadStats
from .synthetic import (
    SyntheticConfig,
    chance_level,
    generate_documents,
    make_document,
    value_set,
    write_synthetic_corpus,
)
from .tokenizer import (
    check_tokenizer,
    load_tokenizer,
    sentence_end_table,
    special_ids,
    tokenizer_identity,
    tokenizer_sha256,
)
from .tokenizer_training import TokenizerSummary, train_tokenizer
from .verify import DirCheck, ShardCheck, check_shard_dir, split_statistics

if TYPE_CHECKING:
    from .loader import SegmentStreamLoader


def __getattr__(name: str) -> Any:
    # The loader needs torch; the data_prep scripts do not, and start faster without it.
    if name == "SegmentStreamLoader":
        from .loader import SegmentStreamLoader

        return SegmentStreamLoader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BadRecordError",
    "DataError",
    "Document",
    "DocumentReader",
    "DirCheck",
    "EpochPlan",
    "INDEX_DTYPE",
    "ManifestError",
    "ReadStats",
    "Sample",
    "SegmentStreamLoader",
    "ShardCheck",
    "ShardError",
    "ShardingSummary",
    "SplitReader",
    "SyntheticConfig",
    "TokenizerError",
    "TokenizerSummary",
    "assign_lanes",
    "chance_level",
    "check_shard_dir",
    "check_tokenizer",
    "epoch_order",
    "generate_documents",
    "is_shard_dir",
    "load_tokenizer",
    "make_document",
    "plan_epoch",
    "read_manifest",
    "segment_ends",
    "sentence_end_table",
    "shard_documents",
    "special_ids",
    "split_of",
    "split_statistics",
    "tokenizer_identity",
    "tokenizer_sha256",
    "train_tokenizer",
    "value_set",
    "write_synthetic_corpus",
]
