"""MemBART: BART with recurrent memory slots. Importing this package registers it with the transformers Auto classes
(`AutoConfig`, `AutoModel`, `AutoModelForSeq2SeqLM`) under `model_type="membart"`."""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_membart import MemBartConfig
from .modeling_membart import (
    MemBartEncoder,
    MemBartEncoderOutput,
    MemBartForConditionalGeneration,
    MemBartModel,
    MemBartPreTrainedModel,
    MemBartSeq2SeqLMOutput,
    MemBartSeq2SeqModelOutput,
)
from .presets import load_preset, preset_names

AutoConfig.register("membart", MemBartConfig, exist_ok=True)
AutoModel.register(MemBartConfig, MemBartModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(MemBartConfig, MemBartForConditionalGeneration, exist_ok=True)

__all__ = [
    "MemBartConfig",
    "MemBartEncoder",
    "MemBartEncoderOutput",
    "MemBartForConditionalGeneration",
    "MemBartModel",
    "MemBartPreTrainedModel",
    "MemBartSeq2SeqLMOutput",
    "MemBartSeq2SeqModelOutput",
    "load_preset",
    "preset_names",
]
