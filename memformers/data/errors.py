"""Exceptions of `memformers.data`.

Every message says what is wrong, where (file, line, field, shard) and what to do about it.
"""

from __future__ import annotations


class DataError(Exception):
    """Bad input, a bad shard directory or a misconfiguration of the data pipeline."""


class BadRecordError(DataError):
    """A malformed input record (bad JSON, a missing or non-text field)."""


class TokenizerError(DataError):
    """A tokenizer that cannot be loaded or lacks what the pipeline needs."""


class ManifestError(DataError):
    """A missing, unreadable or inconsistent `manifest.json`."""


class ShardError(DataError):
    """A shard that is missing, truncated, altered or undecodable.

    `shards` holds the shard path(s) relative to the shard directory.
    """

    def __init__(self, message: str, shards: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.shards = list(shards)


class IncompleteSlicesError(DataError):
    """The merge found slices missing, unfinished, damaged or made with other settings (named in the message)."""
