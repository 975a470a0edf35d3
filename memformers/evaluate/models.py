"""MODEL → the model to evaluate and the settings of the run it came from.

MODEL is a run directory (its latest checkpoint), `RUN_DIR:TAG`, a checkpoint directory of any ZeRO stage
(`RUN_DIR/checkpoints/<tag>`), or a Hugging Face export (loaded from its own code, `trust_remote_code`; its
`pretraining.json` holds the run's settings): its folder, or its hub id (memformers.hub: read from the hub cache,
fetched first unless HF_HUB_OFFLINE is set). The model computes in the run's precision unless told otherwise,
so its figures are the ones training reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memformers.data import DataError, read_manifest
from memformers.export import ExportError, consolidate_state_dict, load_remote_code_model, load_training_model
from memformers.export.inputs import CHECKPOINTS, read_trainer_state, resolve_tag_dir, run_shard_dir
from memformers.export.record import PRECISIONS, read_training_record, training_record
from memformers.hub import PretrainedNotFoundError, is_hub_id, local_folder
from memformers.training.checkpoint import TRAINER_STATE


class EvalError(ValueError):
    """A problem with the model or the data given to the evaluation, phrased as what to do."""


@dataclass
class EvalModel:
    model: torch.nn.Module
    """The model, in eval mode, on its device, in the precision it computes in."""
    record: dict[str, Any]
    """The run's settings (`memformers.export.record.training_record`): seed, noise, eval, lanes, precision."""
    identity: dict[str, Any] = field(default_factory=dict)
    """What was loaded: kind (checkpoint or export), path, tag, step, ZeRO stage."""
    tokenizer_sha256: str | None = None
    """The tokenizer the model was trained with (None where it cannot be known)."""

    @property
    def config(self):
        return self.model.config

    @property
    def layout(self) -> tuple[int, int] | None:
        """(ranks, lanes per rank) of the run, what its evaluation streamed the val split with (None if unknown)."""
        lanes, world_size = self.record.get("lanes"), self.record.get("world_size")
        return (int(world_size or 1), int(lanes)) if lanes else None

    @property
    def global_lanes(self) -> int | None:
        """The run's lanes over all ranks."""
        return self.layout[0] * self.layout[1] if self.layout else None


def load_eval_model(spec: str, *, device: torch.device | None = None, precision: str = "auto") -> EvalModel:
    """The model MODEL names (module docstring), on `device` (default: the CPU), in `precision` (auto: the run's).
    EvalError when MODEL is none of the accepted kinds or cannot be read."""
    try:
        loaded = _load(spec)
    except (ExportError, DataError, OSError, PretrainedNotFoundError) as error:
        raise EvalError(f"cannot load the model {spec}: {error}") from None
    name = (loaded.record.get("precision") or "fp32") if precision == "auto" else precision
    if name not in PRECISIONS:
        raise EvalError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {name!r}")
    loaded.model = loaded.model.to(device or torch.device("cpu"), PRECISIONS[name]).eval()
    loaded.identity["precision"] = name
    return loaded


def _load(spec: str) -> EvalModel:
    path, tag = Path(spec), None
    if not path.exists() and ":" in spec:  # RUN_DIR:TAG
        head, _, tag = spec.rpartition(":")
        path = Path(head)
    if (path / CHECKPOINTS).is_dir():
        return load_checkpoint(resolve_tag_dir(path, tag))
    if tag is not None:
        raise EvalError(f"{path} is not a run directory (no {CHECKPOINTS}/): RUN_DIR:TAG needs a run directory")
    if (path / TRAINER_STATE).is_file():
        return load_checkpoint(path)
    if (path / "config.json").is_file():
        return load_export(path)
    if not path.exists() and is_hub_id(spec):  # an export on the Hugging Face hub, or in the hub cache
        return load_export(local_folder(spec, "model"))
    raise EvalError(
        f"{spec} is not a model: give a run directory (holding {CHECKPOINTS}/), RUN_DIR:TAG, a checkpoint "
        f"directory (holding {TRAINER_STATE}), a directory exported by pretrain/export_hf.py, or the hub id of one"
    )


def load_checkpoint(tag_dir: Path) -> EvalModel:
    """A checkpoint of any ZeRO stage: its fp32 masters in the in-package model, with its run's settings."""
    trainer_state = read_trainer_state(tag_dir)
    state_dict, stage = consolidate_state_dict(tag_dir)
    model = load_training_model(tag_dir, state_dict)
    identity = {"kind": "checkpoint", "path": str(tag_dir), "tag": tag_dir.name, "step": trainer_state.get("step")}
    identity["zero_stage"] = stage
    return EvalModel(model, training_record(trainer_state, tag_dir, stage), identity, _run_tokenizer(trainer_state))


def _run_tokenizer(trainer_state: dict) -> str | None:
    """The tokenizer hash of the run's SHARD_DIR (None if it has moved)."""
    try:
        return read_manifest(run_shard_dir(trainer_state, Path(".")))["tokenizer"]["sha256"]
    except (ExportError, DataError, OSError, KeyError):
        return None


def load_export(out: Path) -> EvalModel:
    """An export, from its own code files; its settings from `pretraining.json` (an older export without one is
    evaluated with the default noise and seed, which the result says)."""
    from transformers import AutoTokenizer

    from memformers.data.tokenizer import tokenizer_sha256

    record = read_training_record(out)
    model = load_remote_code_model(out)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    identity = {
        "kind": "export",
        "path": str(out),
        "tag": (record or {}).get("tag"),
        "step": (record or {}).get("step"),
    }
    if record is None:
        identity["note"] = "no pretraining.json: default noise and seed, not comparable with the run's evaluation"
    return EvalModel(model, record or {}, identity, tokenizer_sha256(tokenizer))
