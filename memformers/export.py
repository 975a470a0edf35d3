"""Export a pretraining checkpoint as a self-contained Hugging Face model directory.

    from memformers.export import export_checkpoint
    report = export_checkpoint("runs/tiny", "exports/tiny")          # or: python pretrain/export_hf.py ...

What goes in OUT_DIR:

    config.json                  MemBartConfig, with `auto_map` naming the two code files beside it
    configuration_membart.py     copies of the package's model code: `AutoModelForSeq2SeqLM.from_pretrained(
    modeling_membart.py            OUT_DIR, trust_remote_code=True)` works where only `transformers` is installed
    model.safetensors            the fp32 master weights of the checkpoint (or their bf16 rounding, dtype="bf16")
    generation_config.json       decoder start / bos / eos / pad from the model config, a max_length
    tokenizer files              the SHARD_DIR's tokenizer the model was trained with
    README.md                    model card: training config, steps, tokens, final eval losses and memory gain

The weights are DeepSpeed's fp32 masters, consolidated from the checkpoint of any ZeRO stage (stages 1-3 with
DeepSpeed's `zero_to_fp32`; stage 0 keeps its masters in the model-states file, read here). The export checks
itself before it is published: the directory, reloaded through the remote-code path, must give the logits of the
in-package model holding the consolidated weights, on a fixed batch carried over two segments (so the memory path
is covered), to `atol` in fp32. It is written to a staging directory beside OUT_DIR and moved into place only when
that check passes.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from memformers.models.membart import MemBartConfig, MemBartForConditionalGeneration

MODEL_CODE_FILES = ("configuration_membart.py", "modeling_membart.py")
AUTO_MAP = {
    "AutoConfig": "configuration_membart.MemBartConfig",
    "AutoModel": "modeling_membart.MemBartModel",
    "AutoModelForSeq2SeqLM": "modeling_membart.MemBartForConditionalGeneration",
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOLERANCE = 1e-5
# Keys of trainer_state.json["last_eval"] shown in the model card, in this order.
EVAL_KEYS = ("eval_loss", "eval_loss_no_memory", "memory_gain", "eval_ppl", "eval_ppl_no_memory", "eval_tokens")


class ExportError(RuntimeError):
    """An input problem, phrased as what to do about it."""


class VerificationError(ExportError):
    """The exported model does not reproduce the training model's logits."""

    def __init__(self, message: str, report: "ExportReport"):
        super().__init__(message)
        self.report = report


@dataclass
class ExportReport:
    out_dir: Path
    tag: str
    step: int
    tokens: int
    dtype: str
    zero_stage: int
    num_parameters: int
    max_abs_diff: float
    """Max |logits/memory difference| of the reloaded export vs the training model (both in fp32)."""
    tolerance: float
    rounding_max_abs_diff: float | None = None
    """dtype="bf16": how much rounding the weights to bf16 moves the same outputs (information, not a check)."""
    files: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"exported {self.tag} (step {self.step}, {self.tokens:,} tokens, ZeRO-{self.zero_stage}, "
                 f"{self.num_parameters:,} parameters) as {self.dtype} to {self.out_dir}",
                 f"check {verdict}: max abs diff of logits and memory over 2 segments, export (remote code, fp32) "
                 f"vs training model = {self.max_abs_diff:.3e} (tolerance {self.tolerance:.0e})"]
        if self.rounding_max_abs_diff is not None:
            lines.append(f"note: rounding the fp32 masters to bf16 moves the same outputs by up to "
                         f"{self.rounding_max_abs_diff:.3e}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ the export


def export_checkpoint(run_dir: str | os.PathLike, out_dir: str | os.PathLike, tag: str | None = None,
                      dtype: str = "fp32", force: bool = False, tokenizer: str | os.PathLike | None = None,
                      tolerance: float = TOLERANCE) -> ExportReport:
    """Consolidate RUN_DIR/checkpoints/<tag> (default: the one `latest` names) into a HF model directory OUT_DIR.

    Args:
        dtype: "fp32" (the masters as they are) or "bf16" (rounded; the check then compares against the training
            model holding the same rounded weights).
        force: replace a non-empty OUT_DIR (it is replaced only once the new export has passed its check).
        tokenizer: a tokenizer directory to use instead of the SHARD_DIR's (`config.data.path` of the run).
    Raises:
        ExportError: bad inputs (message says what to do). VerificationError: the check failed (`.report` has it;
            the unpublished export is left in the staging directory the message names).
    """
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    tag_dir = resolve_tag(run_dir, tag)
    _check_out_dir(out_dir, run_dir, force)
    trainer_state = _read_json(tag_dir / "trainer_state.json")
    hf_tokenizer = load_run_tokenizer(trainer_state, tag_dir, tokenizer)

    state_dict, zero_stage = consolidate_state_dict(tag_dir)
    reference = load_training_model(tag_dir, state_dict)
    _check_tokenizer_matches(hf_tokenizer, reference.config, tag_dir)
    # what is saved, and the fp32 model the reloaded export must match (for bf16: the rounded weights, in fp32)
    exported = reference if dtype == "fp32" else _rounded_copy(reference, DTYPES[dtype])
    expected = reference if dtype == "fp32" else _rounded_copy(reference, DTYPES[dtype]).float()

    staging = out_dir.with_name(f".{out_dir.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    save_export(exported, hf_tokenizer, staging, trainer_state, tag_dir.name, zero_stage,
                max_length=_max_length(trainer_state, reference.config))
    max_abs_diff, rounding = _check_export(staging, expected, reference, hf_tokenizer)
    report = ExportReport(
        out_dir=out_dir, tag=tag_dir.name, step=int(trainer_state.get("step", -1)),
        tokens=int(trainer_state.get("tokens", 0)), dtype=dtype, zero_stage=zero_stage,
        num_parameters=sum(p.numel() for p in reference.parameters()), max_abs_diff=max_abs_diff,
        tolerance=tolerance, rounding_max_abs_diff=rounding, files=sorted(p.name for p in staging.iterdir()),
    )
    if not report.passed:
        raise VerificationError(f"{report.summary()}\nThe export was NOT published; it is left in {staging} "
                                f"for inspection.", report)
    _publish(staging, out_dir)
    return report


def _check_export(staging: Path, expected, reference, tokenizer) -> tuple[float, float | None]:
    """(max abs diff of the reloaded export vs `expected`, and — when the saved weights were rounded — how far the
    rounding moved `expected` from the fp32 `reference`)."""
    batch = verification_batch(tokenizer, reference.config)
    diff = compare_outputs(load_remote_code_model(staging), expected, batch)
    return diff, None if expected is reference else compare_outputs(expected, reference, batch)


def resolve_tag(run_dir: Path, tag: str | None) -> Path:
    """RUN_DIR/checkpoints/<tag>, the tag defaulting to the one named in RUN_DIR/checkpoints/latest."""
    root = run_dir / "checkpoints"
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist")
    available = sorted(p.name for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []
    if not available:
        raise ExportError(f"{run_dir} has no checkpoints ({root}/step-* is missing): pass the run_dir of a "
                          f"pretrain/train.py run that has written at least one checkpoint")
    if tag is None:
        latest = root / "latest"
        if not latest.is_file():
            raise ExportError(f"{latest} is missing, so there is no default tag: pass --tag, one of "
                              f"{', '.join(available)}")
        tag = latest.read_text().strip()
    if tag not in available:
        raise ExportError(f"unknown tag {tag!r} in {root}: available tags are {', '.join(available)}")
    tag_dir = root / tag
    for name in ("model_config.json", "trainer_state.json"):
        if not (tag_dir / name).is_file():
            raise ExportError(f"{tag_dir / name} is missing: {tag} is not a complete trainer checkpoint "
                              f"(export another tag: {', '.join(available)})")
    return tag_dir


def _check_out_dir(out_dir: Path, run_dir: Path, force: bool) -> None:
    out, run = out_dir.resolve(), run_dir.resolve()
    if out == run or out in run.parents or run in out.parents:
        # --force would delete the checkpoints being exported (or the export would land inside the run)
        raise ExportError(f"output {out_dir} overlaps the run directory {run_dir}: choose a directory outside it")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"output directory {out_dir} is not empty: choose another one, or pass --force "
                          f"(force=True) to replace its contents")


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the verified export into place, replacing OUT_DIR (empty, or allowed by force)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out_dir)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{path} is not valid JSON (line {error.lineno}: {error.msg})") from None


# ------------------------------------------------------------------------------------------------ consolidation


def consolidate_state_dict(tag_dir: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The fp32 master weights of a DeepSpeed checkpoint tag, by parameter name, and its ZeRO stage."""
    if (tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt").is_file() or any(tag_dir.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        stage = 3 if (tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt").is_file() else _zero_stage(tag_dir)
        return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name), stage
    model_states = tag_dir / "mp_rank_00_model_states.pt"
    if not model_states.is_file():
        raise ExportError(f"{tag_dir} holds no DeepSpeed model states (mp_rank_00_model_states.pt or "
                          f"zero_pp_rank_0_mp_rank_00_model_states.pt): the checkpoint is incomplete")
    return _stage0_state_dict(tag_dir), 0


def _zero_stage(tag_dir: Path) -> int:
    # mmap: only the small ds_config entry is read, not the module's weights
    states = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False, mmap=True)
    return int((states.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 1))


def _stage0_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """ZeRO-0: the module in mp_rank_00_model_states.pt is the master itself in fp32 training; with bf16/fp16 the
    masters are the optimizer's `fp32_groups` (unnamed, in optimizer parameter-group order), matched to names here."""
    states = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    module, optimizer = states["module"], states.get("optimizer") or {}
    groups = optimizer.get("fp32_groups") or optimizer.get("fp32_groups_flat")
    if groups is None:  # no mixed-precision wrapper: the module's weights are the fp32 masters
        return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}
    model = MemBartForConditionalGeneration(_model_config(tag_dir))
    for names in _candidate_group_orders(model):
        masters = _match_groups(names, groups, module)
        if masters is not None:
            return _with_aliases(masters, module)
    raise ExportError(f"{tag_dir}: cannot name the fp32 master weights of this ZeRO-0 checkpoint (its optimizer "
                      f"parameter groups match neither the trainer's grouping nor the model's parameter order). "
                      f"Write it with ZeRO stage >= 1, or without bf16/fp16.")


def _candidate_group_orders(model) -> list[list[list[str]]]:
    """Parameter names per optimizer group, as the trainer groups them, or as one group in model order."""
    from memformers.training.engine import parameter_groups

    names = {id(p): n for n, p in model.named_parameters()}
    trainer = [[names[id(p)] for p in group["params"]] for group in parameter_groups(model, 0.0)]
    return [trainer, [list(names.values())]]


def _match_groups(names: list[list[str]], groups: list, module: dict) -> dict[str, torch.Tensor] | None:
    """Assign each group's masters to `names`, or None unless every shape matches and every master rounds to the
    weight the checkpoint's module holds (DeepSpeed copies the rounded masters back into the module every step)."""
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
    return any(torch.equal(master.to(dtype).float(), weight) for dtype in (torch.bfloat16, torch.float16, torch.float32))


def _split_flat(flat: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor] | None:
    sizes = [s.numel() for s in shapes]
    if flat.numel() < sum(sizes):
        return None
    return [t.view(s) for t, s in zip(flat[: sum(sizes)].split(sizes), shapes)]


def _with_aliases(masters: dict[str, torch.Tensor], module: dict) -> dict[str, torch.Tensor]:
    """The module's state dict with every parameter (and each tied alias of it, e.g. lm_head → shared) replaced by
    its master: loading an alias's half-precision copy last would overwrite the shared storage."""
    by_storage = {module[name].data_ptr(): master for name, master in masters.items()}
    state = {}
    for key, value in module.items():
        master = by_storage.get(value.data_ptr())
        state[key] = master if master is not None and master.shape == value.shape else (
            value.float() if value.is_floating_point() else value)
    return state


def _model_config(tag_dir: Path) -> MemBartConfig:
    path = tag_dir / "model_config.json"
    try:
        return MemBartConfig.from_dict(_read_json(path))
    except ExportError:
        raise
    except Exception as error:  # config validation errors come in several types
        raise ExportError(f"{path} is not a valid MemBartConfig: {error}") from None


def load_training_model(tag_dir: Path, state_dict: dict[str, torch.Tensor]) -> MemBartForConditionalGeneration:
    """The in-package model class (as the trainer built it, from model_config.json) holding `state_dict`, fp32."""
    model = MemBartForConditionalGeneration(_model_config(tag_dir)).float()
    result = model.load_state_dict(state_dict, strict=False)
    tied = {"lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}
    missing = sorted(set(result.missing_keys) - (tied if "model.shared.weight" in state_dict else set()))
    if missing or result.unexpected_keys:
        raise ExportError(f"{tag_dir}: the checkpoint's weights do not fit model_config.json (missing "
                          f"{missing[:8]}, unexpected {sorted(result.unexpected_keys)[:8]})")
    model.config.architectures = [MemBartForConditionalGeneration.__name__]
    return model.eval()


def _rounded_copy(model: MemBartForConditionalGeneration, dtype: torch.dtype) -> MemBartForConditionalGeneration:
    copy = MemBartForConditionalGeneration(model.config).eval()
    copy.load_state_dict(model.state_dict())
    return copy.to(dtype)


# ---------------------------------------------------------------------------------------------------- tokenizer


def load_run_tokenizer(trainer_state: dict, tag_dir: Path, override: str | os.PathLike | None = None):
    """The tokenizer the run was trained with: `override`, else SHARD_DIR/tokenizer of `config.data.path`."""
    from transformers import AutoTokenizer

    if override is not None:
        path = Path(override)
    else:
        shard_dir = (trainer_state.get("config") or {}).get("data", {}).get("path")
        if not shard_dir:
            raise ExportError(f"{tag_dir / 'trainer_state.json'} has no config.data.path (the SHARD_DIR whose "
                              f"tokenizer/ the run used): pass --tokenizer DIR")
        path = Path(shard_dir) / _manifest_tokenizer_subdir(Path(shard_dir))
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ExportError(f"tokenizer not found at {path} (from "
                          f"{'--tokenizer' if override else 'config.data.path in ' + str(tag_dir / 'trainer_state.json')}):"
                          f" the SHARD_DIR was moved or deleted; pass --tokenizer DIR with the run's tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as error:  # transformers raises several types
        raise ExportError(f"cannot load the tokenizer at {path}: {error}") from None


def _manifest_tokenizer_subdir(shard_dir: Path) -> str:
    """The tokenizer's subdirectory as manifest.json records it (default `tokenizer`)."""
    try:
        return json.loads((shard_dir / "manifest.json").read_text())["tokenizer"].get("path", "tokenizer")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "tokenizer"


def _check_tokenizer_matches(tokenizer, config: MemBartConfig, tag_dir: Path) -> None:
    """A different tokenizer than the run's would export silently wrong text: check its size and special ids."""
    if len(tokenizer) > config.vocab_size:
        raise ExportError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                          f"{config.vocab_size} ({tag_dir / 'model_config.json'}): it is not the run's tokenizer")
    for role in ("bos", "eos", "pad"):
        if getattr(tokenizer, f"{role}_token_id") != getattr(config, f"{role}_token_id"):
            raise ExportError(f"tokenizer {role}_token_id={getattr(tokenizer, f'{role}_token_id')} differs from "
                              f"the model's {getattr(config, f'{role}_token_id')} ({tag_dir / 'model_config.json'}):"
                              f" it is not the run's tokenizer")


# ------------------------------------------------------------------------------------------------------ writing


def _max_length(trainer_state: dict, config: MemBartConfig) -> int:
    """A segment as the model was trained on it (<s> L </s>, L from the SHARD_DIR's manifest), within positions."""
    shard_dir = (trainer_state.get("config") or {}).get("data", {}).get("path")
    try:
        segment_length = int(json.loads((Path(shard_dir) / "manifest.json").read_text())["segment_length"])
        return min(config.max_position_embeddings, segment_length + 2)
    except (OSError, ValueError, KeyError, TypeError):
        return config.max_position_embeddings


def save_export(model, tokenizer, out: Path, trainer_state: dict, tag: str, zero_stage: int, max_length: int) -> None:
    """save_pretrained (safetensors) with auto_map and the model code beside it, tokenizer, generation config, card."""
    from transformers import GenerationConfig

    import memformers.models.membart as package

    config = model.config
    config.auto_map = dict(AUTO_MAP)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        forced_eos_token_id=config.eos_token_id, max_length=max_length,
    )
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in MODEL_CODE_FILES:
        shutil.copyfile(Path(package.__file__).parent / name, out / name)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(model_card(config, trainer_state, tag, zero_stage, str(model.dtype)))


def model_card(config: MemBartConfig, trainer_state: dict, tag: str, zero_stage: int, dtype: str) -> str:
    """README.md: what the model is, how to load it with memory, and how it was trained (from trainer_state)."""
    import yaml

    cfg = trainer_state.get("config") or {}
    last_eval = trainer_state.get("last_eval") or {}
    train = cfg.get("train", {})
    rows = [("checkpoint", tag), ("optimizer steps", trainer_state.get("step")),
            ("training tokens", f"{int(trainer_state.get('tokens', 0)):,}"),
            ("DeepSpeed config", f"{cfg.get('deepspeed')} (ZeRO-{zero_stage})"),
            ("lanes per rank", cfg.get("data", {}).get("lanes")), ("time horizon", train.get("time_horizon")),
            ("learning rate", train.get("lr")), ("memory slots", config.memory_len),
            ("d_model / layers", f"{config.d_model} / {config.encoder_layers}+{config.decoder_layers}"),
            ("exported weights", dtype.replace("torch.", ""))]
    rows = [(name, value) for name, value in rows if value is not None]
    evals = [(k, _fmt(last_eval[k])) for k in EVAL_KEYS if k in last_eval]
    eval_table = ("| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in evals)
                  + f"\n\nEvaluated at step {last_eval.get('step', '?')}. `memory_gain` = loss without memory − loss "
                  "with memory (positive: the memory helps).") if evals else "No evaluation was recorded."
    return f"""---
library_name: transformers
tags: [membart, bart, memory, recurrent-memory, long-context]
---

# MemBART ({config.d_model}d, {config.memory_len} memory slots)

A BART encoder-decoder whose encoder reads and rewrites {config.memory_len} recurrent memory slots at every segment,
pretrained with BART denoising on long documents split into segments, memory carried across segments.
Exported from `{tag}` of a `memformers` pretraining run on {datetime.date.today().isoformat()}.

## Usage

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
`memory_resets` (1 per lane) zeroes a lane's memory where a new document starts.

## Training

| | |
|---|---|
{chr(10).join(f"| {k} | {v} |" for k, v in rows)}

## Evaluation (validation split)

{eval_table}

## Pretraining config

```yaml
{yaml.safe_dump(cfg, sort_keys=False).rstrip()}
```
"""


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------------- verification


def load_remote_code_model(out: Path):
    """The export as `AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=True)` gives it where `memformers`
    is not installed: the class from OUT_DIR's own code files (through transformers' module cache), in fp32.

    The Auto call itself cannot be used here: in a process that imported `memformers.models.membart` (this one),
    transformers prefers the explicitly registered in-package class over the directory's code."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    model_class = get_class_from_dynamic_module(AUTO_MAP["AutoModelForSeq2SeqLM"], str(out))
    if model_class is MemBartForConditionalGeneration:  # would make the check compare the package with itself
        raise ExportError("the remote-code check resolved to the in-package class; it must come from the export")
    return model_class.from_pretrained(str(out), dtype=torch.float32).eval()


def verification_batch(tokenizer, config: MemBartConfig, lanes: int = 2, length: int = 24) -> list[dict]:
    """Two segments for two lanes from a fixed seed: ordinary (non-special) tokens framed by <s> … </s>, lane 1
    padded in segment 1 so the padding mask is exercised too."""
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
        segments.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(~mask, -100),
                         "memory_resets": torch.tensor([index == 0] * lanes)})
    return segments


@torch.no_grad()
def compare_outputs(model_a, model_b, segments: list[dict]) -> float:
    """Max abs difference of logits and memory over `segments`, each model carrying its own memory (fp32)."""
    diff = 0.0
    memory_a = memory_b = None
    for segment in segments:
        out_a = model_a(**segment, memory_states=memory_a)
        out_b = model_b(**segment, memory_states=memory_b)
        memory_a, memory_b = out_a.memory_states, out_b.memory_states
        for a, b in ((out_a.logits, out_b.logits), (memory_a, memory_b)):
            diff = max(diff, (a.float() - b.float()).abs().max().item())
    return diff
