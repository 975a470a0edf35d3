"""The model card (README.md) of an export: what the model is, how to load it with memory, how it was trained."""

from __future__ import annotations

import datetime

from memformers.models.membart import MemBartConfig

from .record import without_machine_paths

EVAL_KEYS = ("eval_loss", "eval_loss_no_memory", "memory_gain", "eval_ppl", "eval_ppl_no_memory", "eval_tokens")
"""Keys of `trainer_state.json["last_eval"]` shown in the model card, in this order."""

USAGE = """\
```python
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

model = AutoModelForSeq2SeqLM.from_pretrained("PATH", trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained("PATH", trust_remote_code=True)  # it reads config.json too
memory = model.construct_memory(batch_size=1)
for segment in ["first part of a document ...", "the next part ..."]:
    ids = tokenizer(segment, return_tensors="pt").input_ids
    encoded = model.get_encoder()(input_ids=ids, memory_states=memory)
    memory = encoded.memory_states          # carry to the next segment
output = model.generate(encoder_outputs=encoded, max_length=64)   # decode with the memory
print(tokenizer.decode(output[0], skip_special_tokens=True))
```

`model(input_ids=..., memory_states=memory, memory_resets=resets, labels=...)` returns `memory_states` too;
`memory_resets` (1 per lane) zeroes a lane's memory where a new document starts."""
"""The card's usage section: loading with `trust_remote_code=True`, carrying the memory across segments."""


def model_card(config: MemBartConfig, trainer_state: dict, tag: str, zero_stage: int, dtype: str) -> str:
    """
    The README.md of an export.

    Args:
        config ([`MemBartConfig`]):
            The exported model's config.
        trainer_state (`dict`):
            The checkpoint's trainer state: step, tokens, last eval and the resolved pretraining config.
        tag (`str`):
            The checkpoint tag exported.
        zero_stage (`int`):
            The ZeRO stage the checkpoint was written with.
        dtype (`str`):
            The dtype of the exported weights, e.g. `"torch.float32"`.

    Returns:
        `str`: the card, Markdown with a YAML header for the Hub.
    """
    import yaml

    cfg = without_machine_paths(trainer_state.get("config") or {})
    rows = training_rows(config, trainer_state, tag, zero_stage, dtype)
    return f"""---
library_name: transformers
tags: [membart, bart, memory, recurrent-memory, long-context]
---

# MemBART ({config.d_model}d, {config.memory_len} memory slots)

A BART encoder-decoder whose encoder reads and rewrites {config.memory_len} recurrent memory slots at every segment,
pretrained with BART denoising on long documents split into segments, memory carried across segments.
Exported from `{tag}` of a `memformers` pretraining run on {datetime.date.today().isoformat()}.

## Usage

{USAGE}

## Training

| | |
|---|---|
{chr(10).join(f"| {k} | {v} |" for k, v in rows)}

## Evaluation (validation split)

{eval_table(trainer_state.get("last_eval") or {})}

## Pretraining config

Paths are given by their last component.

```yaml
{yaml.safe_dump(cfg, sort_keys=False).rstrip()}
```
"""


def training_rows(
    config: MemBartConfig, trainer_state: dict, tag: str, zero_stage: int, dtype: str
) -> list[tuple[str, object]]:
    """The rows of the card's training table (those the trainer state and config give), as (name, value)."""
    cfg = without_machine_paths(trainer_state.get("config") or {})
    train = cfg.get("train", {})
    rows = [
        ("checkpoint", tag),
        ("optimizer steps", trainer_state.get("step")),
        ("training tokens", f"{int(trainer_state.get('tokens', 0)):,}"),
        ("DeepSpeed config", f"{cfg.get('deepspeed')} (ZeRO-{zero_stage})"),
        ("lanes per rank", cfg.get("data", {}).get("lanes")),
        ("time horizon", train.get("time_horizon")),
        ("learning rate", train.get("lr")),
        ("memory slots", config.memory_len),
        ("d_model / layers", f"{config.d_model} / {config.encoder_layers}+{config.decoder_layers}"),
        ("exported weights", dtype.replace("torch.", "")),
    ]
    return [(name, value) for name, value in rows if value is not None]


def eval_table(last_eval: dict) -> str:
    """The card's evaluation section: the `EVAL_KEYS` of the last evaluation as a table, and what they mean."""
    evals = [(k, _fmt(last_eval[k])) for k in EVAL_KEYS if k in last_eval]
    if not evals:
        return "No evaluation was recorded."
    return (
        "| metric | value |\n|---|---|\n"
        + "\n".join(f"| {k} | {v} |" for k, v in evals)
        + f"\n\nEvaluated at step {last_eval.get('step', '?')}. `memory_gain` = loss without memory − loss "
        "with memory (positive: the memory helps)."
    )


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
