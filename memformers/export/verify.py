"""The check of an export before it is published: reloaded through its own code, it must compute what the
in-package model holding the consolidated weights computes, on a fixed batch carried over two segments."""

from __future__ import annotations

from pathlib import Path

import torch

from memformers.models.membart import MemBartConfig, MemBartForConditionalGeneration

from .hf import AUTO_MAP
from .report import ExportError


def check_export(staging: Path, expected, reference, tokenizer) -> tuple[float, float | None]:
    """
    Compare a written export with the model it should reproduce.

    Args:
        staging (`Path`):
            The written (not yet published) export.
        expected ([`MemBartForConditionalGeneration`]):
            The fp32 model the reloaded export must match: `reference`, or for rounded weights a copy holding them.
        reference ([`MemBartForConditionalGeneration`]):
            The training model holding the fp32 masters.
        tokenizer (`PreTrainedTokenizerBase`):
            The run's tokenizer (the batch is drawn from its ordinary tokens).

    Returns:
        `tuple[float, float | None]`: the max abs diff of the reloaded export vs `expected`, and, when the saved
        weights were rounded, how far the rounding moved `expected` from `reference`.
    """
    batch = verification_batch(tokenizer, reference.config)
    diff = compare_outputs(load_remote_code_model(staging), expected, batch)
    return diff, None if expected is reference else compare_outputs(expected, reference, batch)


def load_remote_code_model(out: Path):
    """
    The export as `AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=True)` gives it where `memformers`
    is not installed: the class from OUT_DIR's own code files (through transformers' module cache), in fp32.

    The Auto call itself cannot be used here: in a process that imported `memformers.models.membart` (this one),
    transformers prefers the explicitly registered in-package class over the directory's code.

    Args:
        out (`Path`):
            An export directory.

    Raises:
        [`ExportError`]: the class resolved to the in-package one (the check would compare the package with itself).
    """
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    model_class = get_class_from_dynamic_module(AUTO_MAP["AutoModelForSeq2SeqLM"], str(out))
    if model_class is MemBartForConditionalGeneration:  # would make the check compare the package with itself
        raise ExportError("the remote-code check resolved to the in-package class; it must come from the export")
    return model_class.from_pretrained(str(out), dtype=torch.float32).eval()


def verification_batch(tokenizer, config: MemBartConfig, lanes: int = 2, length: int = 24) -> list[dict]:
    """
    Two segments for `lanes` lanes from a fixed seed: ordinary (non-special) tokens framed by `<s> … </s>`, lane 1
    padded in segment 1 so the padding mask is exercised too.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            The tokenizer whose ordinary tokens are drawn.
        config ([`MemBartConfig`]):
            The model's config (special ids, positions).
        lanes (`int`, *optional*, defaults to 2):
            The batch size.
        length (`int`, *optional*, defaults to 24):
            The segment length, within the model's positions.

    Returns:
        `list[dict]`: the segments, each with `input_ids`, `attention_mask`, `labels` and `memory_resets`.
    """
    generator = torch.Generator().manual_seed(0)
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    length = min(length, config.max_position_embeddings)
    segments = []
    for index in range(2):
        ids = ordinary[torch.randint(len(ordinary), (lanes, length), generator=generator)]
        ids[:, 0], ids[:, -1] = config.bos_token_id, config.eos_token_id
        mask = torch.ones_like(ids, dtype=torch.bool)
        if index == 0:
            ids[1, -5:], mask[1, -5:] = config.pad_token_id, False
        segments.append(
            {
                "input_ids": ids,
                "attention_mask": mask,
                "labels": ids.masked_fill(~mask, -100),
                "memory_resets": torch.tensor([index == 0] * lanes),
            }
        )
    return segments


@torch.no_grad()
def compare_outputs(model_a, model_b, segments: list[dict]) -> float:
    """
    The max abs difference of logits and memory over `segments`, each model carrying its own memory (fp32).

    Args:
        model_a, model_b ([`MemBartForConditionalGeneration`]):
            The two models.
        segments (`list[dict]`):
            The batch, as `verification_batch` makes it.
    """
    diff = 0.0
    memory_a = memory_b = None
    for segment in segments:
        out_a = model_a(**segment, memory_states=memory_a)
        out_b = model_b(**segment, memory_states=memory_b)
        memory_a, memory_b = out_a.memory_states, out_b.memory_states
        for a, b in ((out_a.logits, out_b.logits), (memory_a, memory_b)):
            diff = max(diff, (a.float() - b.float()).abs().max().item())
    return diff
