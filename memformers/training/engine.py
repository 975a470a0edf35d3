"""Building the model and the DeepSpeed engine from the config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from memformers.hub import PretrainedNotFoundError, config_file
from memformers.models.membart import MemBartForConditionalGeneration, load_preset

from .compiling import compile_layers
from .config import ConfigError, PretrainConfig, TrainSection, deepspeed_config
from .distributed import Runtime

# The noiser can insert <mask> tokens (insert_ratio): keep headroom beyond <s> + L + </s> in the position table.
POSITION_HEADROOM = 2


def build_model(
    cfg: PretrainConfig, *, tokenizer_size: int, special_ids: dict[str, int], segment_length: int
) -> MemBartForConditionalGeneration:
    """The model to train: a preset sized for the tokenizer, or `model.init_from` (a MemBART, or a BART converted
    with fresh memory). Checks that the model can read this corpus (vocab, positions). With `model.compile` its
    layers are compiled (they compile at their first call)."""
    overrides = {} if cfg.model.dropout is None else {"dropout": cfg.model.dropout}
    if cfg.model.init_from:
        model = _pretrained(cfg, overrides)
    else:
        if cfg.model.memory_len is not None:
            overrides["memory_len"] = cfg.model.memory_len
        vocab_size = 8 * math.ceil(tokenizer_size / 8)  # multiple of 8: tensor-core friendly
        config = load_preset(
            cfg.model.preset,
            vocab_size=vocab_size,
            pad_token_id=special_ids["pad"],
            bos_token_id=special_ids["bos"],
            eos_token_id=special_ids["eos"],
            decoder_start_token_id=special_ids["eos"],
            forced_eos_token_id=special_ids["eos"],
            **overrides,
        )
        model = MemBartForConditionalGeneration(config)

    model_ids = {name: getattr(model.config, f"{name}_token_id") for name in ("pad", "bos", "eos")}
    mismatched = [f"{name} {i} (the corpus tokenizer's {special_ids[name]})"
                  for name, i in model_ids.items() if i != special_ids[name]]  # fmt: skip
    if mismatched:
        raise ConfigError(
            f"model.init_from={cfg.model.init_from} has other special token ids than the corpus tokenizer: "
            f"{', '.join(mismatched)}. Shard the corpus with the model's tokenizer (shard_documents.py --tokenizer "
            f"{cfg.model.init_from})"
        )
    if model.config.vocab_size < tokenizer_size:
        raise ConfigError(
            f"the model's vocab_size {model.config.vocab_size} is smaller than the corpus tokenizer's "
            f"{tokenizer_size}: use a model made for this tokenizer or re-shard with its tokenizer"
        )
    needed = segment_length + 2 + POSITION_HEADROOM
    if model.config.max_position_embeddings < needed:
        raise ConfigError(
            f"segments of {segment_length} tokens need {needed} positions; the model has "
            f"{model.config.max_position_embeddings}. Re-shard with a shorter --segment-length."
        )
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.model.compile:
        compile_layers(model)
    return model


def _pretrained(cfg: PretrainConfig, overrides: dict) -> MemBartForConditionalGeneration:
    """`model.init_from`: a folder or a hub id (memformers.hub) of a MemBART (its config has memory_len), or of a
    BART converted with fresh memory."""
    name = cfg.model.init_from
    if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
        raise ConfigError(f"model.init_from={name}: no config.json there (a BART or MemBART directory)")
    try:
        config = json.loads(config_file(name).read_text())
    except PretrainedNotFoundError as error:
        raise ConfigError(f"model.init_from={name}: {error}") from None
    source = str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
    if "memory_len" in config:
        return MemBartForConditionalGeneration.from_pretrained(source, **overrides)
    memory_len = cfg.model.memory_len or load_preset(cfg.model.preset).memory_len
    return MemBartForConditionalGeneration.from_bart(source, memory_len=memory_len, **overrides)


def lr_lambda(train: TrainSection):
    """Multiplier of train.lr at an optimizer step: linear warmup, then linear or cosine decay to min_lr_ratio."""
    warmup, total, floor, schedule = train.warmup_steps, train.max_steps, train.min_lr_ratio, train.lr_schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return floor + (1 - floor) * (1 - progress)

    return factor


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases, norms and the memory bias (decaying them only fights their role)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = name.endswith(".bias") or "layer_norm" in name or "layernorm" in name or name.endswith("memory_bias")
        (no_decay if plain else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model, cfg: PretrainConfig, runtime: Runtime, *, load_universal: bool = False):
    """`deepspeed.initialize` with the JSON from `cfg.deepspeed` completed by `cfg`. Returns the engine.

    `load_universal`: the checkpoint to resume is a DeepSpeed universal checkpoint (written for another world
    size and converted, see checkpoint.Checkpointer.prepare): the engine then re-partitions its optimizer states."""
    import deepspeed
    from pydantic import ValidationError
    from torch.optim.lr_scheduler import LambdaLR

    ds_path = Path(cfg.deepspeed)
    if not ds_path.is_file():
        raise ConfigError(f"deepspeed={ds_path} does not exist (ship configs live in ds_configs/)")
    try:
        ds_json = json.loads(ds_path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{ds_path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    if not isinstance(ds_json, dict):
        raise ConfigError(f"{ds_path}: a DeepSpeed config is a JSON object, got {type(ds_json).__name__}")
    ds = deepspeed_config(cfg, ds_json, runtime.world_size, on_cpu=runtime.on_cpu)
    if load_universal:
        ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    try:
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=parameter_groups(model, cfg.train.weight_decay),
            config=ds,
            lr_scheduler=lambda optimizer: LambdaLR(optimizer, lr_lambda(cfg.train)),
        )
    except ValidationError as error:  # DeepSpeed's schema: name the key and the reason
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{ds_path}: DeepSpeed rejects it ({error.title}): {problems}") from None
    return engine


def model_dtype(engine) -> torch.dtype:
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32


def initial_memory(engine, lanes: int, device: torch.device) -> torch.Tensor:
    """Every lane's memory before its first document: zeros `[lanes, M, d]` on `device` in the engine's dtype."""
    return engine.module.construct_memory(lanes).to(device, model_dtype(engine))


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters of the whole model, also under ZeRO-3 (where each rank holds a partition of each)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def flops_per_token(config) -> float:
    """Training FLOPs per target token, ≈ 3 × forward (backward is twice the forward), 2 FLOPs per multiply-add.

    Counted per token with source length ≈ target length: each encoder row (token or memory slot, each uses one
    of its two weight sets) does attention projections 4d² and a d×ffn MLP twice; each decoder row does self- and
    cross-attention (8d², the cross keys/values being computed on encoder rows) and its MLP; then the LM head.
    Attention scores are ignored (small at these lengths), so this slightly under-counts: MFU is an estimate.
    """
    d = config.d_model
    encoder_row = 4 * d * d + 2 * d * config.encoder_ffn_dim
    decoder_row = 8 * d * d + 2 * d * config.decoder_ffn_dim
    forward = 2 * (config.encoder_layers * encoder_row + config.decoder_layers * decoder_row + d * config.vocab_size)
    return 3.0 * forward
