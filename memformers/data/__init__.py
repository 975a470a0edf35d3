"""memformers.data: long documents → ordered segment streams (webdataset shards) and the stream loader.

Knows nothing of the model. Cut by stage:

* `format/` — the SHARD_DIR format both stages share: `manifest.json` and the per-document index
  (manifest.py), one document's tar sample (samples.py), random access to a split (reader.py), whether several
  SHARD_DIRs can be mixed into one training stream (mixing.py).
* `prep/` — offline preparation, what the `data_prep/` scripts run: documents from files, folders and 🤗 datasets
  (sources.py) → a tokenizer (tokenizer_training.py) → token ids cut into segments (segmenting.py) → shards
  written by worker processes (tasks.py, worker.py, writer.py) in the order the main process keeps (scheduler.py,
  pipeline.py) + manifest, resumable (output.py), in one run or in slices (slices.py), through `shard_documents`
  (sharding.py); `check_shard_dir` verifies a SHARD_DIR (verify.py).
* `stream/` — online reading for training: the schedule over global lanes (schedule.py, pure) and
  `SegmentStreamLoader` (loader.py): batches of one segment per lane, per rank, resumable on any shape.
* tokenizer.py — loading and checking tokenizers, their identity, and the sentence-end rule.

The command-line scripts are in `data_prep/`; the synthetic recall corpus is an evaluation concern
(`memformers.recall`).
"""

from typing import TYPE_CHECKING, Any

from .errors import BadRecordError, DataError, ManifestError, ShardError, TokenizerError
from .format.manifest import INDEX_DTYPE, is_shard_dir, read_manifest
from .format.mixing import check_mixable, mixing_problems
from .format.reader import SplitReader
from .format.samples import Sample
from .prep.segmenting import segment_ends
from .prep.sharding import shard_documents
from .prep.slices import IncompleteSlicesError
from .prep.sources import Document, DocumentReader, ReadStats
from .prep.summary import ShardingSummary
from .prep.tokenizer_training import TokenizerSummary, train_tokenizer
from .prep.verify import DirCheck, ShardCheck, check_shard_dir, split_statistics
from .prep.worker import split_of
from .stream.schedule import EpochOrder, MixtureSchedule, Schedule, Slot, StreamState
from .tokenizer import (
    check_tokenizer,
    ends_sentence,
    load_tokenizer,
    sentence_end_table,
    special_ids,
    tokenizer_identity,
    tokenizer_sha256,
)

if TYPE_CHECKING:
    from .stream.loader import SegmentStreamLoader


def __getattr__(name: str) -> Any:
    # The loader needs torch; the data_prep scripts do not, and start faster without it.
    if name == "SegmentStreamLoader":
        from .stream.loader import SegmentStreamLoader

        return SegmentStreamLoader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BadRecordError",
    "DataError",
    "DirCheck",
    "Document",
    "DocumentReader",
    "EpochOrder",
    "INDEX_DTYPE",
    "IncompleteSlicesError",
    "ManifestError",
    "ReadStats",
    "Sample",
    "SegmentStreamLoader",
    "ShardCheck",
    "ShardError",
    "Schedule",
    "ShardingSummary",
    "Slot",
    "SplitReader",
    "StreamState",
    "MixtureSchedule",
    "TokenizerError",
    "TokenizerSummary",
    "check_mixable",
    "check_shard_dir",
    "check_tokenizer",
    "ends_sentence",
    "is_shard_dir",
    "load_tokenizer",
    "mixing_problems",
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
]
