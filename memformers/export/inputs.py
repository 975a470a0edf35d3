"""The inputs of an export, checked: the checkpoint tag, the trainer's files, the output directory, the run's tokenizer.

Tags, `latest` and the trainer's file names are `memformers.training.checkpoint`'s; the SHARD_DIR's manifest and
tokenizer are read with `memformers.data`. Their errors come out as `ExportError`s, so that callers catch one type.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from memformers.data import DataError, is_shard_dir, load_tokenizer, read_manifest
from memformers.models.membart import MemBartConfig
from memformers.training.checkpoint import MODEL_CONFIG, TRAINER_STATE, CheckpointError, resolve_tag

from .report import ExportError

CHECKPOINTS = "checkpoints"
"""The folder of RUN_DIR that holds the checkpoint tags (as `pretrain/train.py` names it)."""


def resolve_tag_dir(run_dir: Path, tag: str | None) -> Path:
    """
    The directory of a complete trainer checkpoint of a run.

    Args:
        run_dir (`Path`):
            The pretraining run directory.
        tag (`str`, *optional*):
            The checkpoint tag; defaults to the one `RUN_DIR/checkpoints/latest` names.

    Returns:
        `Path`: `RUN_DIR/checkpoints/<tag>`, checked to hold the trainer's files.

    Raises:
        [`ExportError`]: the run directory does not exist, has no checkpoints, or the tag is unknown or incomplete.
    """
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist")
    root = run_dir / CHECKPOINTS
    try:
        return root / resolve_tag(root, tag)
    except CheckpointError as error:
        raise ExportError(str(error)) from error


def check_out_dir(out_dir: Path, run_dir: Path, force: bool) -> None:
    """
    Refuse an output directory that overlaps the run, is a file, or is not empty (unless `force`).

    Args:
        out_dir (`Path`):
            The directory the export is to be published to.
        run_dir (`Path`):
            The run being exported (`force` would delete its checkpoints if the two overlapped).
        force (`bool`):
            Whether a non-empty `out_dir` may be replaced.

    Raises:
        [`ExportError`]: `out_dir` cannot be used; the message says what to choose instead.
    """
    out, run = out_dir.resolve(), run_dir.resolve()
    if out == run or out in run.parents or run in out.parents:
        # --force would delete the checkpoints being exported (or the export would land inside the run)
        raise ExportError(f"output {out_dir} overlaps the run directory {run_dir}: choose a directory outside it")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ExportError(
            f"output directory {out_dir} is not empty: choose another one, or pass --force "
            f"(force=True) to replace its contents"
        )


def read_json(path: Path) -> dict:
    """
    A JSON file of a checkpoint.

    Args:
        path (`Path`):
            The file.

    Raises:
        [`ExportError`]: the file is not valid JSON.
    """
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{path} is not valid JSON (line {error.lineno}: {error.msg})") from None


def read_trainer_state(tag_dir: Path) -> dict:
    """The trainer's state of a checkpoint (step, tokens, last eval, the resolved config), from `trainer_state.json`."""
    return read_json(tag_dir / TRAINER_STATE)


def read_model_config(tag_dir: Path) -> MemBartConfig:
    """
    The model config the trainer built the model from.

    Args:
        tag_dir (`Path`):
            The checkpoint directory (holds `model_config.json`).

    Raises:
        [`ExportError`]: the file is not valid JSON or not a valid [`MemBartConfig`].
    """
    path = tag_dir / MODEL_CONFIG
    config = read_json(path)
    try:
        return MemBartConfig.from_dict(config)
    except Exception as error:  # config validation errors come in several types
        raise ExportError(f"{path} is not a valid MemBartConfig: {error}") from None


def load_run_tokenizer(trainer_state: dict, tag_dir: Path, override: str | os.PathLike | None = None):
    """
    The tokenizer the run was trained with, loaded and checked by `memformers.data.load_tokenizer`.

    Args:
        trainer_state (`dict`):
            The checkpoint's trainer state; `config.data.path` is the run's SHARD_DIR.
        tag_dir (`Path`):
            The checkpoint directory (named in messages).
        override (`str` or `os.PathLike`, *optional*):
            A tokenizer directory (or a SHARD_DIR) to use instead of the run's SHARD_DIR.

    Returns:
        `PreTrainedTokenizerFast`: `override`'s tokenizer, else the SHARD_DIR's (checked against its manifest).

    Raises:
        [`ExportError`]: there is no tokenizer where it should be (the message says to pass `--tokenizer`), or it
            cannot be loaded.
    """
    if override is not None:
        source = Path(override)
        directory = _tokenizer_dir(source)
    else:
        source = run_shard_dir(trainer_state, tag_dir)
        directory = _tokenizer_dir(source) if is_shard_dir(source) else None
    if directory is None or not _has_tokenizer_files(directory):
        origin = "--tokenizer" if override else f"config.data.path in {tag_dir / TRAINER_STATE}"
        raise ExportError(
            f"tokenizer not found at {directory or source} (from {origin}): the SHARD_DIR was moved "
            f"or deleted; pass --tokenizer DIR with the run's tokenizer"
        )
    try:
        return load_tokenizer(source)
    except DataError as error:
        raise ExportError(f"cannot load the tokenizer at {directory}: {error}") from error


def check_tokenizer_matches(tokenizer, config: MemBartConfig, tag_dir: Path) -> None:
    """
    Refuse a tokenizer other than the run's (it would export silently wrong text): check its size and special ids.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            The tokenizer to export with the model.
        config ([`MemBartConfig`]):
            The model's config.
        tag_dir (`Path`):
            The checkpoint directory (named in messages).

    Raises:
        [`ExportError`]: the tokenizer has more tokens than the model, or other bos/eos/pad ids.
    """
    if len(tokenizer) > config.vocab_size:
        raise ExportError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{config.vocab_size} ({tag_dir / MODEL_CONFIG}): it is not the run's tokenizer"
        )
    for role in ("bos", "eos", "pad"):
        if getattr(tokenizer, f"{role}_token_id") != getattr(config, f"{role}_token_id"):
            raise ExportError(
                f"tokenizer {role}_token_id={getattr(tokenizer, f'{role}_token_id')} differs from "
                f"the model's {getattr(config, f'{role}_token_id')} ({tag_dir / MODEL_CONFIG}):"
                f" it is not the run's tokenizer"
            )


def run_shard_dir(trainer_state: dict, tag_dir: Path) -> Path:
    """
    The SHARD_DIR the run trained on, `config.data.path` of its trainer state.

    Raises:
        [`ExportError`]: the trainer state does not name one.
    """
    shard_dir = _data_path(trainer_state)
    if not shard_dir:
        raise ExportError(
            f"{tag_dir / TRAINER_STATE} has no config.data.path (the SHARD_DIR whose tokenizer/ the "
            f"run used): pass --tokenizer DIR"
        )
    return Path(shard_dir)


def read_run_manifest(shard_dir: Path) -> dict:
    """
    The manifest of the run's SHARD_DIR, read and checked by `memformers.data.read_manifest`.

    Raises:
        [`ExportError`]: the manifest is missing or invalid.
    """
    try:
        return read_manifest(shard_dir)
    except DataError as error:
        raise ExportError(str(error)) from error


def generation_max_length(trainer_state: dict, config: MemBartConfig) -> int:
    """
    The `max_length` of the export's generation config: a segment as the model was trained on it.

    Args:
        trainer_state (`dict`):
            The checkpoint's trainer state; `config.data.path` is the run's SHARD_DIR.
        config ([`MemBartConfig`]):
            The model's config.

    Returns:
        `int`: `<s> L </s>` (L the SHARD_DIR manifest's `segment_length`) within the model's positions, or
        `max_position_embeddings` when the manifest cannot be read (a moved SHARD_DIR, exported with
        `--tokenizer`).
    """
    shard_dir = _data_path(trainer_state)
    try:
        segment_length = int(read_manifest(shard_dir)["segment_length"]) if shard_dir else None
    except (DataError, TypeError, ValueError):
        segment_length = None
    if segment_length is None:
        return config.max_position_embeddings
    return min(config.max_position_embeddings, segment_length + 2)


def _tokenizer_dir(source: Path) -> Path:
    """The folder holding the tokenizer files: a SHARD_DIR's as its manifest names it, else `source` itself."""
    return source / read_run_manifest(source)["tokenizer"]["path"] if is_shard_dir(source) else source


def _has_tokenizer_files(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file()


def _data_path(trainer_state: dict) -> str | None:
    """The run's SHARD_DIR: `data.path`, or a mixture's first source (the sources share the tokenizer)."""
    data = (trainer_state.get("config") or {}).get("data", {})
    sources = data.get("sources") or []
    return data.get("path") or (sources[0].get("path") if sources else None)
