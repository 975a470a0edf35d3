"""Export a pretraining checkpoint as a self-contained Hugging Face model directory.

    from memformers.export import export_checkpoint
    report = export_checkpoint("runs/tiny", "exports/tiny")          # or: python pretrain/export_hf.py ...

What goes in OUT_DIR (hf.py writes it):

    config.json                  MemBartConfig, with `auto_map` naming the two code files beside it
    configuration_membart.py     copies of the package's model code: `AutoModelForSeq2SeqLM.from_pretrained(
    modeling_membart.py            OUT_DIR, trust_remote_code=True)` works where only `transformers` is installed
    model.safetensors            the fp32 master weights of the checkpoint (or their bf16 rounding, dtype="bf16")
    generation_config.json       decoder start / bos / eos / pad from the model config, a max_length
    tokenizer files              the SHARD_DIR's tokenizer the model was trained with
    README.md                    model card (card.py): training config, steps, tokens, final eval losses, memory gain
    pretraining.json             the run's noise, seed, eval settings, lanes and precision (record.py): evaluating
                                   the export reproduces evaluating its checkpoint (pretrain/evaluate.py)

The weights are DeepSpeed's fp32 masters, consolidated from the checkpoint of any ZeRO stage (consolidate.py). The
export checks itself before it is published (verify.py): the directory, reloaded through the remote-code path, must
give the logits of the in-package model holding the consolidated weights, on a fixed batch carried over two
segments (so the memory path is covered), to `atol` in fp32. It is written to a staging directory beside OUT_DIR
and moved into place only when that check passes. The inputs (tag, output directory, tokenizer) are checked by
inputs.py, with the trainer's checkpoint code and the data pipeline's manifest and tokenizer readers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from memformers.files import publish_dir

from .card import model_card
from .consolidate import consolidate_state_dict, load_training_model, rounded_copy
from .hf import AUTO_MAP, DTYPES, MODEL_CODE_FILES, save_export
from .inputs import (
    check_out_dir,
    check_tokenizer_matches,
    generation_max_length,
    load_run_tokenizer,
    read_trainer_state,
    resolve_tag_dir,
)
from .record import TRAINING_RECORD, read_training_record, training_record, write_training_record
from .report import TOLERANCE, ExportError, ExportReport, VerificationError
from .verify import check_export, compare_outputs, load_remote_code_model, verification_batch

__all__ = [
    "AUTO_MAP",
    "DTYPES",
    "MODEL_CODE_FILES",
    "TOLERANCE",
    "TRAINING_RECORD",
    "ExportError",
    "ExportReport",
    "VerificationError",
    "compare_outputs",
    "consolidate_state_dict",
    "export_checkpoint",
    "load_remote_code_model",
    "load_run_tokenizer",
    "load_training_model",
    "model_card",
    "read_training_record",
    "resolve_tag_dir",
    "save_export",
    "verification_batch",
]


def export_checkpoint(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tag: str | None = None,
    dtype: str = "fp32",
    force: bool = False,
    tokenizer: str | os.PathLike | None = None,
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """
    Consolidate `RUN_DIR/checkpoints/<tag>` into a Hugging Face model directory OUT_DIR, check it, publish it.

    The directory is written by this module's `save_export` (looked up when called, so that a test can replace it)
    to a staging directory beside OUT_DIR, and moved into place only once it has passed its check.

    Args:
        run_dir (`str` or `os.PathLike`):
            The pretraining run directory (holds `checkpoints/`).
        out_dir (`str` or `os.PathLike`):
            The directory to publish the export to; it must be empty or absent, and outside `run_dir`.
        tag (`str`, *optional*):
            The checkpoint tag; defaults to the one `checkpoints/latest` names.
        dtype (`str`, *optional*, defaults to `"fp32"`):
            `"fp32"` (the masters as they are) or `"bf16"` (rounded; the check then compares against the training
            model holding the same rounded weights).
        force (`bool`, *optional*, defaults to `False`):
            Replace a non-empty OUT_DIR (it is replaced only once the new export has passed its check).
        tokenizer (`str` or `os.PathLike`, *optional*):
            A tokenizer directory to use instead of the SHARD_DIR's (`config.data.path` of the run).
        tolerance (`float`, *optional*, defaults to `TOLERANCE`):
            The largest max abs difference of logits and memory the check accepts.

    Returns:
        [`ExportReport`]: what was exported, and how closely the export reproduces the training model.

    Raises:
        [`ExportError`]: bad inputs (the message says what to do).
        [`VerificationError`]: the check failed (`.report` has it; the unpublished export is left in the staging
            directory the message names).
    """
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    tag_dir = resolve_tag_dir(run_dir, tag)
    check_out_dir(out_dir, run_dir, force)
    trainer_state = read_trainer_state(tag_dir)
    hf_tokenizer = load_run_tokenizer(trainer_state, tag_dir, tokenizer)

    state_dict, zero_stage = consolidate_state_dict(tag_dir)
    reference = load_training_model(tag_dir, state_dict)
    check_tokenizer_matches(hf_tokenizer, reference.config, tag_dir)
    # what is saved, and the fp32 model the reloaded export must match (for bf16: the rounded weights, in fp32)
    exported = reference if dtype == "fp32" else rounded_copy(reference, DTYPES[dtype])
    expected = reference if dtype == "fp32" else rounded_copy(reference, DTYPES[dtype]).float()

    staging = out_dir.with_name(f".{out_dir.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    max_length = generation_max_length(trainer_state, reference.config)
    save_export(exported, hf_tokenizer, staging, trainer_state, tag_dir.name, zero_stage, max_length=max_length)
    write_training_record(staging, training_record(trainer_state, tag_dir, zero_stage))
    max_abs_diff, rounding = check_export(staging, expected, reference, hf_tokenizer)
    report = ExportReport(
        out_dir=out_dir,
        tag=tag_dir.name,
        step=int(trainer_state.get("step", -1)),
        tokens=int(trainer_state.get("tokens", 0)),
        dtype=dtype,
        zero_stage=zero_stage,
        num_parameters=sum(p.numel() for p in reference.parameters()),
        max_abs_diff=max_abs_diff,
        tolerance=tolerance,
        rounding_max_abs_diff=rounding,
        files=sorted(p.name for p in staging.iterdir()),
    )
    if not report.passed:
        raise VerificationError(
            f"{report.summary()}\nThe export was NOT published; it is left in {staging} for inspection.", report
        )
    publish_dir(staging, out_dir)
    return report
