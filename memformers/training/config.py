"""The one pretraining config: YAML file + dotted overrides → a validated, typed `PretrainConfig`.

Every component reads its section of this object; nothing else reads YAML. Validation happens once, at start:
an unknown or mistyped key names the key, its section's valid keys and the closest match; a wrong type or a value
outside its choices names the key and what is accepted. Cross-checks that need the DeepSpeed JSON, the corpus
manifest or the world size live in `validate_against(...)`, called by the engine once those are known.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from memformers.noising import DenoisingConfig

from .distributed import adam_implementation


class ConfigError(ValueError):
    """A config problem, phrased as what to change."""


@dataclass
class ModelSection:
    preset: str = "tiny"
    """Size preset (`tiny`, `membart-base`, `membart-large`) used when `init_from` is not set."""
    init_from: str | None = None
    """Optional pretrained BART (converted with `from_bart`) or MemBART to start from: a folder, or a Hugging Face
    hub id (`facebook/bart-base`; with HF_HUB_OFFLINE=1 read from the hub cache)."""
    memory_len: int | None = None
    """Memory slots; overrides the preset's (a MemBART `init_from` keeps its own)."""
    dropout: float | None = None
    """Overrides the preset's dropout."""
    gradient_checkpointing: bool = False
    """Recompute each layer in backward (less activation memory, one more forward)."""
    compile: bool = False
    """Compile each encoder and decoder layer with torch.compile (inductor, dynamic shapes; identical layers share
    one compiled graph). The first step is slower by the compile time, which the log reports once."""


@dataclass
class DataSource:
    """One corpus of a mixture (`data.sources`)."""

    path: str = ""
    """A SHARD_DIR written by `data_prep/shard_documents.py`."""
    weight: float = 1.0
    """Its share of the training tokens, relative to the other sources' weights."""
    name: str | None = None
    """Its name in metrics and document keys (default: the SHARD_DIR's folder name)."""


@dataclass
class DataSection:
    path: str | None = None
    """A SHARD_DIR written by `data_prep/shard_documents.py` (its manifest fixes the segment length and tokenizer)."""
    sources: list[DataSource] | None = None
    """Instead of `path`: a weighted mixture, a list of {path, weight, name}; the SHARD_DIRs must share the
    tokenizer and segment length. Each new document comes from the source furthest below its share of tokens."""
    lanes: int = 4
    """Document streams per rank: the micro batch. Each lane carries its own memory."""
    prefetch: int = 8
    """Batches prepared ahead in the loader's background thread."""
    producer: Literal["auto", "thread", "process"] = "auto"
    """Where the training stream's batches are made (read, assembled, noised): in a thread of the trainer, or in a
    process of its own, so that the loader's Python does not take the GIL from the loop that launches the GPU's
    kernels. auto: a process on a GPU, a thread on the CPU. Evaluation streams always use a thread."""
    max_bad_documents: int = 10
    """Documents that fail their checksum (a damaged shard) are skipped, logged and counted; one more than this
    many stops the run (0: the first one does)."""

    def corpora(self) -> list[DataSource]:
        """The sources trained on, names resolved: `sources`, or `path` as one source of weight 1."""
        listed = self.sources if self.sources else [DataSource(self.path)]
        return [DataSource(s.path, s.weight, s.name or Path(s.path).name) for s in listed]


@dataclass
class TrainSection:
    max_steps: int = 100
    """Optimizer steps to run."""
    time_horizon: int = 4
    """T: consecutive segments per lane in one rollout; gradients flow through the memory across them."""
    rollouts_per_step: int = 1
    """Gradient accumulation: rollouts (of T segments each) per optimizer step."""
    memory_replay: bool = False
    """Memformer's memory replay back-propagation: keep only the memories between segments, recompute each
    segment in backward (peak activation memory of one segment, for one extra forward)."""
    loss_weighting: Literal["uniform", "exponential"] = "uniform"
    """How segment losses of a rollout are combined: equally, or the reference's weights 2^t / sum(2^t)."""
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    """The schedule decays to lr * min_lr_ratio."""
    warmup_steps: int = 100
    lr_schedule: Literal["linear", "cosine"] = "linear"
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (not applied to biases, norms, embeddings of positions or the memory bias)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    grad_clip: float = 1.0
    epochs: int | None = None
    """Stop after this many passes over the training split (None: cycle until max_steps). With `data.sources`:
    when the first source would start its pass number epochs + 1."""
    max_nonfinite_steps: int = 5
    """Stop the run after this many consecutive skipped steps (non-finite, or loss spikes)."""
    loss_spike_factor: float | None = None
    """Skip the update of a rollout whose loss exceeds this factor times the median of the last
    `loss_spike_window` rollouts' (counted with the non-finite steps). None: off. One host synchronisation per
    rollout."""
    loss_spike_window: int = 100
    """Rollouts whose median loss is the spike check's reference; the check starts once that many are known."""
    collective_timeout_s: float | None = None
    """Bound on every collective: when a rank stalls or dies, the others exit (code 4) after this long instead of
    hanging. None: 1800 s on GPUs, 600 s on the CPU."""


@dataclass
class EvalSection:
    every_steps: int = 0
    """Evaluate on the val split every N steps (0: only at the end)."""
    max_batches: int | None = None
    """Cap on val batches per evaluation (None: the whole split)."""
    positions: int = 8
    """Loss is reported per segment position 0..positions-1 (the last bucket includes later positions)."""


@dataclass
class CheckpointSection:
    every_steps: int = 500
    keep: int = 3
    """Newest checkpoints kept under RUN_DIR/checkpoints (older ones are deleted)."""


@dataclass
class LoggingSection:
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online if WANDB_API_KEY or WANDB_MODE=online is set, else offline (synced later with `wandb sync`);
    disabled where wandb is not installed (the `wandb` extra)."""
    wandb_project: str = "memformers"
    wandb_name: str | None = None
    progress_bar: bool = True
    peak_tflops: float | None = None
    """Per-device peak for the MFU estimate; None: looked up from the accelerator (CUDA), else MFU is not logged."""
    profile_steps: list[int] | None = None
    """[first, last]: record a torch profiler trace of these optimizer steps (CPU and, on GPUs, CUDA activity) into
    RUN_DIR/profile/ (one Chrome trace per rank, for chrome://tracing or Perfetto, and a table of the top ops)."""


@dataclass
class PretrainConfig:
    run_dir: str = ""
    """Everything of the run: resolved config, metrics.jsonl, checkpoints/. An existing run_dir resumes."""
    seed: int = 1234
    """Seeds the model init, dropout, the document order (with the epoch) and the noise (with the segment)."""
    deepspeed: str = "ds_configs/zero2.json"
    """DeepSpeed JSON (ZeRO stage, precision). Batch sizes, optimizer, scheduler and clipping are filled in from
    this config; set them here, not there."""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    noise: DenoisingConfig = field(default_factory=DenoisingConfig)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ------------------------------------------------------------------------------------------------ parse and validate


def load_config(path: str | Path | None, overrides: list[str] = ()) -> PretrainConfig:
    """Read `path` (YAML), apply `key.sub=value` overrides (values parsed as YAML), validate, return the config."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw = _parse_yaml(path.read_text(), f"config file {path}", at_line=True) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not of the form section.key=value")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node[leaf] = _parse_yaml(value, f"override {override!r}") if value != "" else None
    config = _build(PretrainConfig, raw, "")
    _check_values(config)
    return config


def _parse_yaml(text: str, where: str, at_line: bool = False) -> Any:
    """YAML, or a ConfigError that names `where` (and, `at_line`, the line and column of the mistake)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) if at_line else None
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        what = f"{where}{at}: not valid YAML" if at_line else f"{where}: its value is not valid YAML"
        raise ConfigError(f"{what} ({problem}); fix it and start again") from None


def _build(cls: type, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown config key {where + str(key)!r}.{hint} Valid keys in "
                f"{where.rstrip('.') or 'the top level'}: {', '.join(fields)}"
            )
    values = {name: _coerce(hints[name], value, where + name) for name, value in raw.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:  # a section's own validation (e.g. DenoisingConfig)
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {error}") from None


def _coerce(hint: Any, value: Any, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r} ({type(value).__name__})")


def _check_values(cfg: PretrainConfig) -> None:
    def need(condition: bool, message: str) -> None:
        if not condition:
            raise ConfigError(message)

    need(bool(cfg.run_dir), "run_dir is required: the directory for this run's checkpoints and metrics")
    need(
        not Path(cfg.run_dir).exists() or Path(cfg.run_dir).is_dir(),
        f"run_dir={cfg.run_dir} exists and is not a directory: choose another run_dir",
    )
    _check_data(cfg.data)
    need(cfg.data.lanes >= 1, f"data.lanes must be >= 1 (got {cfg.data.lanes})")
    need(cfg.train.max_steps >= 1, f"train.max_steps must be >= 1 (got {cfg.train.max_steps})")
    need(cfg.train.time_horizon >= 1, f"train.time_horizon must be >= 1 (got {cfg.train.time_horizon})")
    need(cfg.train.rollouts_per_step >= 1, f"train.rollouts_per_step must be >= 1 (got {cfg.train.rollouts_per_step})")
    need(cfg.train.lr > 0, f"train.lr must be > 0 (got {cfg.train.lr})")
    need(0 <= cfg.train.min_lr_ratio <= 1, f"train.min_lr_ratio must be in [0, 1] (got {cfg.train.min_lr_ratio})")
    need(cfg.train.warmup_steps >= 0, "train.warmup_steps must be >= 0")
    need(len(cfg.train.betas) == 2, f"train.betas must be two numbers (got {cfg.train.betas})")
    need(cfg.train.max_nonfinite_steps >= 1, "train.max_nonfinite_steps must be >= 1")
    spike = cfg.train.loss_spike_factor
    need(spike is None or spike > 1, f"train.loss_spike_factor must be > 1 or null (got {spike})")
    need(cfg.train.loss_spike_window >= 1, "train.loss_spike_window must be >= 1")
    timeout = cfg.train.collective_timeout_s
    need(timeout is None or timeout > 0, f"train.collective_timeout_s must be > 0 or null (got {timeout})")
    need(cfg.data.max_bad_documents >= 0, "data.max_bad_documents must be >= 0")
    need(cfg.checkpoint.every_steps >= 1, "checkpoint.every_steps must be >= 1")
    need(cfg.checkpoint.keep >= 1, "checkpoint.keep must be >= 1 (the newest checkpoint is what a resume needs)")
    need(cfg.eval.every_steps >= 0, "eval.every_steps must be >= 0 (0: evaluate only at the end)")
    need(cfg.eval.positions >= 1, "eval.positions must be >= 1")
    need(
        cfg.logging.wandb in ("auto", "disabled") or importlib.util.find_spec("wandb") is not None,
        f"logging.wandb={cfg.logging.wandb} but wandb is not installed: pip install 'memformers[wandb]', or set "
        "logging.wandb=disabled (metrics.jsonl has every number; auto uses wandb only where it is installed)",
    )
    profile = cfg.logging.profile_steps
    need(
        profile is None or (len(profile) == 2 and 1 <= profile[0] <= profile[1]),
        f"logging.profile_steps must be [first, last] optimizer steps with 1 <= first <= last (got {profile}), "
        "e.g. [10, 12]",
    )
    try:
        cfg.noise.validate()
    except ValueError as error:
        raise ConfigError(f"noise: {error}") from None


def _check_data(data: DataSection) -> None:
    """Exactly one of data.path and data.sources; sources with a path, a positive weight, distinct names."""
    if data.path and data.sources:
        raise ConfigError("set data.path or data.sources, not both (one SHARD_DIR, or a weighted mixture)")
    if not data.path and not data.sources:
        raise ConfigError(
            "data.path is required: a SHARD_DIR made by data_prep/shard_documents.py "
            "(or data.sources: a list of {path, weight, name} to train on a mixture)"
        )
    for i, source in enumerate(data.sources or []):
        if not source.path:
            raise ConfigError(f"data.sources[{i}].path is required: a SHARD_DIR made by data_prep/shard_documents.py")
        if not source.weight > 0:
            raise ConfigError(f"data.sources[{i}].weight must be > 0 (got {source.weight})")
    names = [source.name for source in data.corpora()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(
            f"data.sources: the name(s) {', '.join(map(repr, repeated))} are used by more than one source; "
            "give each source a distinct `name`"
        )


# Keys the DeepSpeed JSON must not set, because this config owns them: (ds key, what to set instead)
_OWNED_DS_KEYS = {
    "optimizer": "train.lr / train.betas / train.eps / train.weight_decay",
    "scheduler": "train.warmup_steps / train.lr_schedule / train.min_lr_ratio",
    "gradient_clipping": "train.grad_clip",
}


def deepspeed_config(cfg: PretrainConfig, ds_json: dict[str, Any], world_size: int, on_cpu: bool) -> dict[str, Any]:
    """The DeepSpeed config dict: the JSON's ZeRO/precision settings, plus batch sizes, optimizer and clipping
    from `cfg`. Batch keys in the JSON must agree with `cfg` (an error says what to change)."""
    where = cfg.deepspeed
    for key, instead in _OWNED_DS_KEYS.items():
        if key in ds_json:
            raise ConfigError(f"{where}: remove {key!r}; the pretraining config sets it ({instead})")
    expected = {
        "train_micro_batch_size_per_gpu": cfg.data.lanes,
        "gradient_accumulation_steps": cfg.train.rollouts_per_step,
        "train_batch_size": cfg.data.lanes * cfg.train.rollouts_per_step * world_size,
    }
    names = {
        "train_micro_batch_size_per_gpu": "data.lanes",
        "gradient_accumulation_steps": "train.rollouts_per_step",
        "train_batch_size": "data.lanes × train.rollouts_per_step × world size",
    }
    for key, value in expected.items():
        if key in ds_json and ds_json[key] not in ("auto", value):
            raise ConfigError(
                f'{where}: {key}={ds_json[key]} does not match {names[key]} = {value}. Set it to "auto" (or '
                f"remove it) and choose the batch with data.lanes / train.rollouts_per_step."
            )
    if ds_json.get("fp16", {}).get("enabled") and ds_json.get("bf16", {}).get("enabled"):
        raise ConfigError(f"{where}: enable at most one of fp16 and bf16")
    ds = {k: v for k, v in ds_json.items() if k not in expected}
    ds.update(expected)
    ds["gradient_clipping"] = cfg.train.grad_clip
    ds["optimizer"] = {
        "type": "AdamW",
        "params": {
            "lr": cfg.train.lr,
            "betas": list(cfg.train.betas),
            "eps": cfg.train.eps,
            "weight_decay": cfg.train.weight_decay,
            **adam_implementation(on_cpu, offloaded=_offloads_optimizer(ds_json)),
        },
    }
    ds.setdefault("steps_per_print", 10**9)  # our logger reports; keep DeepSpeed's quiet
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def _offloads_optimizer(ds_json: dict[str, Any]) -> bool:
    offload = ds_json.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") not in ("none", None)


# ------------------------------------------------------------------------------------------ the reference, generated


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (attribute docstrings live only in the source)."""
    import ast
    import inspect
    import textwrap

    source = textwrap.dedent(inspect.getsource(cls))
    source_lines = source.splitlines()
    body = ast.parse(source).body[0].body
    docs = {}
    for node, after in zip(body, body[1:] + [None]):
        if not isinstance(node, ast.AnnAssign):
            continue
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):  # a docstring under the field
            docs[node.target.id] = " ".join(str(after.value.value).split())
        elif "  # " in source_lines[node.lineno - 1]:  # or a trailing comment
            docs[node.target.id] = source_lines[node.lineno - 1].split("  # ", 1)[1].strip()
    return docs


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def config_reference() -> str:
    """The config reference as Markdown tables, one per section, from the schema itself."""
    root = PretrainConfig()
    lines = []
    sections = [("top level", PretrainConfig, root, "")]
    sections += [
        (f.name, type(getattr(root, f.name)), getattr(root, f.name), f.name + ".")
        for f in dataclasses.fields(PretrainConfig)
        if dataclasses.is_dataclass(getattr(root, f.name))
    ]
    sections.insert(sections.index(next(s for s in sections if s[0] == "data")) + 1,
                    ("data.sources[]", DataSource, DataSource(), "data.sources[]."))  # fmt: skip
    for title, cls, instance, prefix in sections:
        docs, hints = _field_docs(cls), typing.get_type_hints(cls)
        lines += [f"**{title}**", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            value = getattr(instance, f.name)
            if dataclasses.is_dataclass(value):
                continue
            default = "—" if value in ("", None) else f"`{json.dumps(value)}`"
            meaning = docs.get(f.name, "").replace("|", chr(92) + "|")
            lines.append(f"| `{prefix}{f.name}` | {_type_name(hints[f.name])} | {default} | {meaning} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # python -m memformers.training.config  → the reference, for README.md
    print(config_reference(), end="")
