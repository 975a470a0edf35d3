"""The Hugging Face directory of an export: weights, config with `auto_map`, model code, tokenizer, card."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from memformers.files import atomic_write

from .card import model_card

MODEL_CODE_FILES = ("configuration_membart.py", "modeling_membart.py")
"""The package's model code copied into the export, for `trust_remote_code=True`."""
AUTO_MAP = {
    "AutoConfig": "configuration_membart.MemBartConfig",
    "AutoModel": "modeling_membart.MemBartModel",
    "AutoModelForSeq2SeqLM": "modeling_membart.MemBartForConditionalGeneration",
}
"""`config.json["auto_map"]`: the Auto classes, each as `<code file>.<class>` of `MODEL_CODE_FILES`."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""The dtypes the weights can be saved in, by name."""


def save_export(model, tokenizer, out: Path, trainer_state: dict, tag: str, zero_stage: int, max_length: int) -> None:
    """
    Write an export to a new directory.

    `save_pretrained` (safetensors) with `auto_map` and the model code beside it, the tokenizer, a generation config
    and the model card.

    Args:
        model ([`MemBartForConditionalGeneration`]):
            The model to save, in the dtype its weights are to be saved in.
        tokenizer (`PreTrainedTokenizerBase`):
            The run's tokenizer.
        out (`Path`):
            The directory to write; it must not exist yet.
        trainer_state (`dict`):
            The checkpoint's trainer state, for the card.
        tag (`str`):
            The checkpoint tag, for the card.
        zero_stage (`int`):
            The checkpoint's ZeRO stage, for the card.
        max_length (`int`):
            The generation config's `max_length`.
    """
    from transformers import GenerationConfig

    import memformers.models.membart as package

    config = model.config
    config.auto_map = dict(AUTO_MAP)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        forced_eos_token_id=config.eos_token_id,
        max_length=max_length,
    )
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in MODEL_CODE_FILES:
        shutil.copyfile(Path(package.__file__).parent / name, out / name)
    tokenizer.save_pretrained(out)
    atomic_write(out / "README.md", model_card(config, trainer_state, tag, zero_stage, str(model.dtype)))
