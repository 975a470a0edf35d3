"""Tokenizer helpers: loading (from a tokenizer directory, a hub id or a SHARD_DIR), checks, identity.

The pipeline needs a *fast* (🤗 `tokenizers`-backed) tokenizer with BART's special tokens `<s>` (bos),
`</s>` (eos), `<pad>` and `<mask>`; `<unk>` is optional. Tokenizers made by
`data_prep/train_tokenizer.py` have `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>`=4, as BART; any other
HF tokenizer directory with those special tokens (e.g. a downloaded `facebook/bart-base`) works too,
with its own ids, which the manifest records.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memformers.hub import PretrainedNotFoundError, local_folder

from .errors import TokenizerError
from .format.manifest import TOKENIZER_SUBDIR, is_shard_dir, read_manifest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: Special-token roles and the attribute of a HF tokenizer that holds each one's id.
SPECIAL_ROLES = ("bos", "pad", "eos", "unk", "mask")
REQUIRED_ROLES = ("bos", "eos", "pad", "mask")
#: A folder holding none of these is not a tokenizer (transformers would "load" a model folder's config.json alone
#: as a tokenizer of its special tokens only).
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
)  # fmt: skip
_HUB_PATTERNS = ("*.json", "*.txt", "*.model")  # what a tokenizer is made of on the hub (not the weights)

# The one sentence-end rule of the package (segment cuts here, sentence permutation in the denoiser): text ends a
# sentence when it ends with . ! or ? followed by optional closing quotes or brackets and whitespace.
_SENTENCE_END = re.compile(r"[.!?][\"'\u2019\u201d\u00bb)\]}]*\s*\Z")


def ends_sentence(text: str) -> bool:
    """Whether `text` (a token's text) ends a sentence: `.`, `!` or `?`, then closing quotes/brackets, whitespace."""
    return _SENTENCE_END.search(text) is not None


def load_tokenizer(path_or_shard_dir: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a fast HF tokenizer from a tokenizer directory, a hub id (memformers.hub) or a SHARD_DIR.

    For a SHARD_DIR, loads its `tokenizer/` copy and checks it against the manifest's hash.
    Raises TokenizerError when it cannot be loaded (a folder without tokenizer files, an offline hub id that is
    not cached, ...), is not a fast tokenizer, or lacks `<s>`, `</s>`, `<pad>` or `<mask>`.
    """
    source = os.fspath(path_or_shard_dir)
    expected_sha = None
    if is_shard_dir(source):
        manifest = read_manifest(source)
        expected_sha = manifest["tokenizer"]["sha256"]
        source = os.path.join(source, manifest["tokenizer"].get("path", TOKENIZER_SUBDIR))
    else:  # a folder, or the hub repository's files in the hub cache (read from a folder, transformers needs no
        try:  # config.json then)
            folder = local_folder(source, "tokenizer", _HUB_PATTERNS)
        except PretrainedNotFoundError as error:
            raise TokenizerError(str(error)) from None
        _check_tokenizer_folder(folder)
        source = str(folder)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    except Exception as exc:  # transformers raises many types (OSError, ValueError, ...)
        raise TokenizerError(
            f"cannot load a tokenizer from {source}: {exc}. Pass a tokenizer directory (with tokenizer.json), a "
            "hub id (reachable, or in the hub cache), or a SHARD_DIR."
        ) from exc
    check_tokenizer(tokenizer, source)
    if expected_sha is not None and tokenizer_sha256(tokenizer) != expected_sha:
        raise TokenizerError(
            f"the tokenizer in {source} differs from the one the shards were made with (hash "
            "mismatch with manifest.json): restore it or re-shard the corpus"
        )
    return tokenizer


def _check_tokenizer_folder(folder: Path) -> None:
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        return
    held = sorted(p.name for p in folder.iterdir())
    what = f"it holds {', '.join(held[:8])}{', ...' if len(held) > 8 else ''}" if held else "it is empty"
    hint = (
        f" (an unfinished shard directory? its tokenizer is in {folder / TOKENIZER_SUBDIR})"
        if (folder / TOKENIZER_SUBDIR).is_dir()
        else ""
    )
    raise TokenizerError(
        f"{folder} is a folder but not a tokenizer: it has none of {', '.join(TOKENIZER_FILES)} ({what}){hint}. "
        "Pass a folder a tokenizer was saved to (data_prep/train_tokenizer.py, save_pretrained), a SHARD_DIR, or a "
        "hub id such as facebook/bart-base"
    )


def check_tokenizer(tokenizer: Any, name: str = "tokenizer") -> None:
    """Raise TokenizerError unless `tokenizer` is fast and has distinct bos/eos/pad/mask tokens."""
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TokenizerError(
            f"{name} is not a fast tokenizer (no tokenizer.json backend); the pipeline needs one: "
            "save it with a recent transformers, or train one with data_prep/train_tokenizer.py"
        )
    ids = special_ids(tokenizer)
    missing = [role for role in REQUIRED_ROLES if ids.get(role) is None]
    if missing:
        present = {role: getattr(tokenizer, f"{role}_token", None) for role in SPECIAL_ROLES}
        raise TokenizerError(
            f"{name} lacks the special tokens {', '.join(f'{r}_token' for r in missing)} that BART "
            f"pretraining needs (it has {present}). Add them, e.g. tokenizer.add_special_tokens("
            "{'bos_token': '<s>', 'eos_token': '</s>', 'pad_token': '<pad>', 'mask_token': '<mask>'}) "
            "and save it, or train one with data_prep/train_tokenizer.py"
        )
    required = [ids[role] for role in REQUIRED_ROLES]
    if len(set(required)) != len(required):
        raise TokenizerError(f"{name}: bos/eos/pad/mask must be distinct tokens, got ids {ids}")


def special_ids(tokenizer: Any) -> dict[str, int | None]:
    """{'bos', 'pad', 'eos', 'unk', 'mask'} → token id (None where the tokenizer has no such token)."""
    return {role: getattr(tokenizer, f"{role}_token_id", None) for role in SPECIAL_ROLES}


def tokenizer_sha256(tokenizer: Any) -> str:
    """A hash of what determines the token ids: the backend's tokenizer.json, runtime settings dropped."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    canonical = json.dumps(spec, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    extra = json.dumps(special_ids(tokenizer), sort_keys=True)
    return hashlib.sha256((canonical + extra).encode("utf-8")).hexdigest()


def tokenizer_identity(tokenizer: Any, name: str | None = None) -> dict[str, Any]:
    """Name, class, vocab size, special ids and hash: the manifest's `tokenizer` entry."""
    return {
        "name": name or getattr(tokenizer, "name_or_path", "") or "",
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "special_ids": special_ids(tokenizer),
        "sha256": tokenizer_sha256(tokenizer),
    }


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every token id of a vocabulary."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def sentence_end_table(tokenizer: Any) -> np.ndarray:
    """Bool array over the vocabulary: True for tokens whose decoded text ends a sentence.

    A token ends a sentence when its decoded text does (`ends_sentence`). Special tokens never do.
    """
    backend = tokenizer.backend_tokenizer
    size = max(len(tokenizer), backend.get_vocab_size(with_added_tokens=True))
    special = set(tokenizer.all_special_ids)
    table = np.zeros(size, dtype=bool)
    for token_id in range(size):
        if token_id in special:
            continue
        table[token_id] = ends_sentence(backend.decode([token_id], skip_special_tokens=False))
    return table
