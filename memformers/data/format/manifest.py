"""The shard directory layout and its `manifest.json`.

A SHARD_DIR made by `data_prep/shard_documents.py` is self-contained::

    SHARD_DIR/
      manifest.json              this file's schema, below
      tokenizer/                 a copy of the tokenizer (`AutoTokenizer.from_pretrained` loads it)
      train/shard-000000.tar     webdataset shards, one sample per document
      train/index.npy            per-document index of the split (INDEX_DTYPE), for random access
      val/...                    the same for the validation split (when --val-fraction > 0)

`manifest.json` (keys sorted, indent 2)::

    {
      "format": "memformers.segments", "format_version": 2,
      "segment_length": L,                 # max tokens of a segment, <s>/</s> not included
      "token_dtype": "uint16" | "uint32",
      "tokenizer": {"path": "tokenizer", "name": ..., "class": ..., "vocab_size": V,
                    "special_ids": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": ...},
                    "sha256": ...},        # tokenizer_sha256() of the copy in tokenizer/
      "settings": {...},                   # the arguments that determine the shards' bytes
      "inputs": [...],                     # what was read (paths with size/mtime, dataset names)
      "splits": {
        "train": {"documents": n, "segments": n, "tokens": n,
                  "index": {"path": "train/index.npy", "sha256": ..., "bytes": n},
                  "shards": [{"path": "train/shard-000000.tar", "documents": n, "segments": n,
                              "tokens": n, "bytes": n, "sha256": ...}, ...]},
        "val": {...}
      },
      "stats": {"documents_read": n, "documents_written": n, "skipped": {"empty": n, ...},
                "invalid_utf8": n}
    }

`index.npy` has one row per document of the split, in shard order (INDEX_DTYPE): the shard number,
the byte span of the document's sample inside the shard tar (its tar headers and data), its token and
segment counts, and the CRC-32 of the span. Every rank computes the global lane schedule from
`num_segments`; the loader reads a document with one seek and checks its CRC.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ManifestError

MANIFEST_NAME = "manifest.json"
FORMAT = "memformers.segments"
# Version 2 (this code): segments are cut after closing brackets too (`.)`, `?]`: the one sentence-end rule of
# `data.tokenizer.ends_sentence`, shared with the denoiser). Version 1 shards (cut before such brackets) are read
# as they are: the files have the same layout, only some cut positions differ.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
TOKENIZER_SUBDIR = "tokenizer"

INDEX_DTYPE = np.dtype(
    [
        ("shard", "<u4"),
        ("offset", "<u8"),
        ("length", "<u8"),
        ("num_tokens", "<u4"),
        ("num_segments", "<u4"),
        ("crc32", "<u4"),
    ]
)


def is_shard_dir(path: str | os.PathLike) -> bool:
    """True when `path` is a directory holding a `manifest.json`."""
    return (Path(path) / MANIFEST_NAME).is_file()


def read_manifest(shard_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check `SHARD_DIR/manifest.json`; raise ManifestError naming what is wrong."""
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{shard_dir} is not a shard directory: it has no {MANIFEST_NAME}. "
            "Make one with data_prep/shard_documents.py (an interrupted run writes the manifest "
            "when it is re-run to completion)."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(
            f"cannot read {path}: {exc}. Restore it, or re-run data_prep/shard_documents.py on the same inputs"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise ManifestError(
            f"{path} has format_version {manifest.get('format_version')}; this code reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: re-shard the corpus with this version's shard_documents.py"
        )
    for key in ("segment_length", "token_dtype", "tokenizer", "splits"):
        if key not in manifest:
            raise ManifestError(f"{path} lacks the key {key!r}")
    return manifest


def split_entry(manifest: dict[str, Any], split: str, shard_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest's entry for `split`, or ManifestError listing the splits there are."""
    splits = manifest["splits"]
    if split not in splits:
        raise ManifestError(
            f"{shard_dir} has no split {split!r}; it has {sorted(splits)}"
            + (" (make a val split with --val-fraction)" if split == "val" else "")
        )
    return splits[split]
