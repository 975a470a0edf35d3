"""A DeepSpeed checkpoint of any ZeRO stage → the fp32 master weights by name, and the model holding them.

Stages 1-3 are consolidated with DeepSpeed's `zero_to_fp32`. Stage 0 keeps its masters in the model-states file:
the module itself in fp32 training; with bf16/fp16 the optimizer's `fp32_groups` (unnamed, in optimizer
parameter-group order), which are named here by matching them to the trainer's parameter groups.
"""

from __future__ import annotations

from pathlib import Path

import torch

from memformers.models.membart import MemBartForConditionalGeneration
from memformers.training.checkpoint import MODEL_CONFIG

from .inputs import read_model_config
from .report import ExportError

MODEL_STATES = "mp_rank_00_model_states.pt"
"""DeepSpeed's model-states file of a checkpoint tag (ZeRO stages 0-2)."""
ZERO3_MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"
"""DeepSpeed's model-states file of rank 0 under ZeRO-3."""
TIED_WEIGHTS = frozenset({"lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"})
"""Aliases of `model.shared.weight`: a state dict may leave them out."""


def consolidate_state_dict(tag_dir: Path) -> tuple[dict[str, torch.Tensor], int]:
    """
    The fp32 master weights of a DeepSpeed checkpoint tag, by parameter name, and its ZeRO stage.

    Args:
        tag_dir (`Path`):
            The checkpoint directory, `RUN_DIR/checkpoints/<tag>`.

    Returns:
        `tuple[dict[str, torch.Tensor], int]`: the masters by name, and the ZeRO stage they were written with.

    Raises:
        [`ExportError`]: the directory holds no DeepSpeed model states, or its ZeRO-0 masters cannot be named.
    """
    if (tag_dir / ZERO3_MODEL_STATES).is_file() or any(tag_dir.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        stage = 3 if (tag_dir / ZERO3_MODEL_STATES).is_file() else zero_stage(tag_dir)
        return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name), stage
    if not (tag_dir / MODEL_STATES).is_file():
        raise ExportError(
            f"{tag_dir} holds no DeepSpeed model states ({MODEL_STATES} or "
            f"{ZERO3_MODEL_STATES}): the checkpoint is incomplete"
        )
    return stage0_state_dict(tag_dir), 0


def zero_stage(tag_dir: Path) -> int:
    """The ZeRO stage in the DeepSpeed config saved with a checkpoint tag (1 when it does not say)."""
    # mmap: only the small ds_config entry is read, not the module's weights
    states = torch.load(tag_dir / MODEL_STATES, map_location="cpu", weights_only=False, mmap=True)
    return int((states.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 1))


def stage0_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """
    The fp32 masters of a ZeRO-0 checkpoint tag, by name.

    The module in the model-states file is the master itself in fp32 training; with bf16/fp16 the masters are the
    optimizer's `fp32_groups` (unnamed, in optimizer parameter-group order), matched to names here.

    Raises:
        [`ExportError`]: the optimizer's groups match neither the trainer's grouping nor the model's order.
    """
    states = torch.load(tag_dir / MODEL_STATES, map_location="cpu", weights_only=False)
    module, optimizer = states["module"], states.get("optimizer") or {}
    groups = optimizer.get("fp32_groups") or optimizer.get("fp32_groups_flat")
    if groups is None:  # no mixed-precision wrapper: the module's weights are the fp32 masters
        return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}
    model = MemBartForConditionalGeneration(read_model_config(tag_dir))
    for names in candidate_group_orders(model):
        masters = match_groups(names, groups, module)
        if masters is not None:
            return with_aliases(masters, module)
    raise ExportError(
        f"{tag_dir}: cannot name the fp32 master weights of this ZeRO-0 checkpoint (its optimizer "
        f"parameter groups match neither the trainer's grouping nor the model's parameter order). "
        f"Write it with ZeRO stage >= 1, or without bf16/fp16."
    )


def candidate_group_orders(model: MemBartForConditionalGeneration) -> list[list[list[str]]]:
    """Parameter names per optimizer group: as the trainer groups them, or as one group in model order."""
    from memformers.training.engine import parameter_groups

    names = {id(p): n for n, p in model.named_parameters()}
    trainer = [[names[id(p)] for p in group["params"]] for group in parameter_groups(model, 0.0)]
    return [trainer, [list(names.values())]]


def match_groups(names: list[list[str]], groups: list, module: dict) -> dict[str, torch.Tensor] | None:
    """
    Name each optimizer group's masters.

    Args:
        names (`list[list[str]]`):
            The parameter names of each group, in order.
        groups (`list`):
            The optimizer's fp32 groups: a list of tensors per group, or one flat tensor per group (fused).
        module (`dict`):
            The checkpoint's module state dict.

    Returns:
        `dict[str, torch.Tensor]` or `None`: the masters by name; `None` unless every shape matches and every
        master rounds to the weight the module holds (DeepSpeed copies the rounded masters back every step).
    """
    if len(groups) != len(names):
        return None
    masters = {}
    for group_names, tensors in zip(names, groups):
        if torch.is_tensor(tensors):  # a fused optimizer keeps one flat fp32 tensor per group
            tensors = _split_flat(tensors, [module[n].shape for n in group_names])
        if tensors is None or len(tensors) != len(group_names):
            return None
        for name, master in zip(group_names, tensors):
            if master.shape != module[name].shape or not _rounds_to(master, module[name]):
                return None
            masters[name] = master.detach().float().clone()
    return masters


def _rounds_to(master: torch.Tensor, weight: torch.Tensor) -> bool:
    weight = weight.float()
    dtypes = (torch.bfloat16, torch.float16, torch.float32)
    return any(torch.equal(master.to(dtype).float(), weight) for dtype in dtypes)


def _split_flat(flat: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor] | None:
    sizes = [s.numel() for s in shapes]
    if flat.numel() < sum(sizes):
        return None
    return [t.view(s) for t, s in zip(flat[: sum(sizes)].split(sizes), shapes)]


def with_aliases(masters: dict[str, torch.Tensor], module: dict) -> dict[str, torch.Tensor]:
    """
    The module's state dict with every parameter, and each tied alias of it (e.g. `lm_head` → `shared`), replaced
    by its master: loading an alias's half-precision copy last would overwrite the shared storage.
    """
    by_storage = {module[name].data_ptr(): master for name, master in masters.items()}
    state = {}
    for key, value in module.items():
        master = by_storage.get(value.data_ptr())
        state[key] = (
            master
            if master is not None and master.shape == value.shape
            else (value.float() if value.is_floating_point() else value)
        )
    return state


def load_training_model(tag_dir: Path, state_dict: dict[str, torch.Tensor]) -> MemBartForConditionalGeneration:
    """
    The in-package model class, as the trainer built it from `model_config.json`, holding `state_dict` in fp32.

    Args:
        tag_dir (`Path`):
            The checkpoint directory.
        state_dict (`dict[str, torch.Tensor]`):
            The consolidated masters (`consolidate_state_dict`).

    Raises:
        [`ExportError`]: the weights do not fit the model config.
    """
    model = MemBartForConditionalGeneration(read_model_config(tag_dir)).float()
    result = model.load_state_dict(state_dict, strict=False)
    missing = sorted(set(result.missing_keys) - (TIED_WEIGHTS if "model.shared.weight" in state_dict else set()))
    if missing or result.unexpected_keys:
        raise ExportError(
            f"{tag_dir}: the checkpoint's weights do not fit {MODEL_CONFIG} (missing "
            f"{missing[:8]}, unexpected {sorted(result.unexpected_keys)[:8]})"
        )
    model.config.architectures = [MemBartForConditionalGeneration.__name__]
    return model.eval()


def rounded_copy(model: MemBartForConditionalGeneration, dtype: torch.dtype) -> MemBartForConditionalGeneration:
    """A copy of `model` with its weights rounded to `dtype` (the model itself is left as it is)."""
    copy = MemBartForConditionalGeneration(model.config).eval()
    copy.load_state_dict(model.state_dict())
    return copy.to(dtype)
