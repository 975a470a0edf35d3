"""`pretraining.json` in an export: what an evaluation of the export needs to reproduce the run's own.

The noise, seed and evaluation settings of the run, its lane layout and the precision it computed in, the
checkpoint it came from and the names of the data it was trained on (no absolute paths: `without_machine_paths`).
`pretrain/evaluate.py` reads it, so evaluating an export gives the numbers of evaluating its checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from memformers.files import write_json_atomic

TRAINING_RECORD = "pretraining.json"

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
"""The dtypes a run computes in, by the name the record uses."""


def checkpoint_precision(tag_dir: Path) -> str:
    """The precision the run computed in (its DeepSpeed config saved with the checkpoint): bf16, fp16 or fp32."""
    from .consolidate import MODEL_STATES, ZERO3_MODEL_STATES

    path = tag_dir / ZERO3_MODEL_STATES if (tag_dir / ZERO3_MODEL_STATES).is_file() else tag_dir / MODEL_STATES
    if not path.is_file():
        return "fp32"
    # mmap: only the small ds_config entry is read, not the module's weights
    ds = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("ds_config") or {}
    if ds.get("bf16", {}).get("enabled"):
        return "bf16"
    return "fp16" if ds.get("fp16", {}).get("enabled") else "fp32"


def training_record(trainer_state: dict, tag_dir: Path, zero_stage: int) -> dict:
    """The record of the run behind checkpoint `tag_dir` (module docstring)."""
    config = trainer_state.get("config") or {}
    data = config.get("data") or {}
    return {
        "tag": tag_dir.name,
        "step": trainer_state.get("step"),
        "tokens": trainer_state.get("tokens"),
        "zero_stage": zero_stage,
        "precision": checkpoint_precision(tag_dir),
        "seed": config.get("seed"),
        "noise": config.get("noise"),
        "eval": config.get("eval"),
        "world_size": trainer_state.get("world_size"),
        "lanes": trainer_state.get("lanes", data.get("lanes")),
        "data": without_machine_paths({"path": data.get("path"), "sources": data.get("sources")}),
        "last_eval": trainer_state.get("last_eval") or {},
    }


def without_machine_paths(value):
    """`value` (a config, a record) with every absolute path cut to its last component (`/scratch/me/data/wiki-512`
    → `wiki-512`): what an export is shared with says what was trained on, not where it lay on one machine."""
    if isinstance(value, dict):
        return {key: without_machine_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_machine_paths(item) for item in value]
    if isinstance(value, str) and (value.startswith(("/", "~")) or (len(value) > 2 and value[1:3] in (":\\", ":/"))):
        return Path(value).name
    return value


def write_training_record(out: Path, record: dict) -> None:
    write_json_atomic(out / TRAINING_RECORD, record)


def read_training_record(export_dir: Path) -> dict | None:
    """The export's record, or None for an export written before it existed."""
    path = Path(export_dir) / TRAINING_RECORD
    return json.loads(path.read_text()) if path.is_file() else None
