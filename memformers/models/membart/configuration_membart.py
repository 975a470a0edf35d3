"""MemBART configuration: a `BartConfig` plus the number of memory slots.

This file depends on `transformers` only: `pretrain/export_hf.py` copies it next to exported weights so that
`AutoConfig.from_pretrained(dir, trust_remote_code=True)` works without the `memformers` package.
"""

from huggingface_hub.dataclasses import strict
from transformers import BartConfig


@strict
class MemBartConfig(BartConfig):
    r"""Configuration of a MemBART model: every [`BartConfig`] field, plus

    Args:
        memory_len (`int`, defaults to 128):
            Number of memory slots, each of size `d_model`, read and rewritten by the encoder at every segment.
            The released `membart-base` uses 64 and `membart-large` 128.
    """

    model_type = "membart"

    memory_len: int = 128

    def validate_architecture(self):
        super().validate_architecture()
        if self.memory_len < 1:
            raise ValueError(f"MemBartConfig.memory_len must be >= 1 (got {self.memory_len}).")
        if self.d_model % self.encoder_attention_heads != 0:
            raise ValueError(
                f"MemBartConfig.d_model ({self.d_model}) must be divisible by encoder_attention_heads "
                f"({self.encoder_attention_heads})."
            )


__all__ = ["MemBartConfig"]
