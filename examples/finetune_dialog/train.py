"""Finetune an exported MemBART on multi-session dialogues, the memory carried from turn to turn.

    python examples/finetune_dialog/train.py --model exports/tiny \
        --data examples/finetune_dialog/data/sample_dialogs.json --output runs/dialog --steps 200
    torchrun --nproc_per_node 2 examples/finetune_dialog/train.py ... --engine deepspeed --zero-stage 2

Each lane walks one dialogue at a time, example by example (dialog_data.py); a rollout is `--time-horizon`
consecutive examples per lane with gradients through the memory (truncated BPTT), one optimizer step per rollout;
the memory is detached between rollouts and reset where a lane starts a new dialogue. `--engine torch` is plain
PyTorch (AdamW) in one process; `--engine deepspeed` runs DeepSpeed (ZeRO `--zero-stage`, optional `--bf16`) in
one process or under a launcher, each rank taking its share of the dialogues.

The model (with its code, for `trust_remote_code=True`), the tokenizer and `dialog_finetune.json` (the settings
generate.py needs to read dialogues as training did) are saved to --output; `metrics.jsonl` logs the loss.
Needs torch and transformers (and deepspeed for --engine deepspeed); not the memformers package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))  # dialog_data / generate beside this file, however it is started
from dialog_data import DialogDataError, TurnStreams, dialogue_examples, load_dialogues  # noqa: E402
from generate import SETTINGS_FILE, generate_reply, load_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="MemBART directory from pretrain/export_hf.py (or a finetune)")
    p.add_argument("--data", required=True, help="dialogue JSON in the reference format")
    p.add_argument("--output", required=True, help="where the finetuned model is saved")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (one rollout each)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=10, help="linear warmup steps, then a constant lr")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--lanes", type=int, default=4, help="dialogues side by side (per rank): the micro batch")
    p.add_argument("--time-horizon", type=int, default=4, help="examples per lane in one rollout (BPTT length)")
    p.add_argument(
        "--context-turns",
        type=int,
        default=1,
        help="turns the encoder reads per example; older turns reach the model only through the memory",
    )
    p.add_argument("--max-source-len", type=int, default=128, help="encoder tokens per example, <s></s> included")
    p.add_argument("--max-target-len", type=int, default=64, help="reply tokens per example, <s></s> included")
    p.add_argument("--engine", choices=("torch", "deepspeed"), default="torch")
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="with --engine torch (DeepSpeed places the model itself)",
    )
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=2, help="with --engine deepspeed")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 weights and compute (--engine deepspeed only); the saved model is then bf16",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument(
        "--sample",
        action="store_true",
        help="after training, print a reply generated with and without memory for the last turn of the first dialogue",
    )
    args = p.parse_args(argv)
    if args.bf16 and args.engine != "deepspeed":
        p.error("--bf16 needs --engine deepspeed")
    for name in ("steps", "lanes", "time_horizon", "context_turns"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# --------------------------------------------------------------------------------------------------- the rollout


def decoder_inputs(labels: torch.Tensor, pad_id: int, start_id: int) -> torch.Tensor:
    """BART's teacher forcing: labels shifted right behind the decoder start token, -100 read as padding."""
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad_id)
    shifted[:, 0] = start_id
    return shifted


@dataclass
class Rollout:
    loss: torch.Tensor
    """Mean token loss over the rollout (differentiable)."""
    memory: torch.Tensor
    """Memory after the last example, detached: where the next rollout starts."""
    tokens: int


def run_rollout(model, batches: list[dict], memory: torch.Tensor, *, pad_id: int, start_id: int) -> Rollout:
    """Forward `batches` in order, memory flowing (with gradients) from each example into the next."""
    memory = memory.detach()
    loss_sum, tokens = 0.0, 0
    for batch in batches:
        labels = batch["labels"]
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            memory_states=memory,
            memory_resets=batch["resets"],
            decoder_input_ids=decoder_inputs(labels, pad_id, start_id),
            use_cache=False,
        )
        # summed, not averaged per example: padding lanes and short replies must not be up-weighted
        loss_sum = loss_sum + F.cross_entropy(
            out.logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="sum"
        )
        tokens += int((labels != -100).sum())
        memory = out.memory_states
    return Rollout(loss_sum / max(tokens, 1), memory.detach(), tokens)


# ---------------------------------------------------------------------------------------------------- engines


class TorchEngine:
    """Plain PyTorch: AdamW, gradient clipping, warmup."""

    def __init__(self, model, args):
        self.module = model.to(args.device)
        self.rank, self.world_size = 0, 1
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup(args.warmup))
        self.grad_clip = args.grad_clip

    def __call__(self, **kwargs):
        return self.module(**kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict_context(self):
        return nullcontext()


class DeepSpeedEngine:
    """DeepSpeed ZeRO: in one process (a group of one is set up here) or one per rank under a launcher."""

    def __init__(self, model, args):
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        _default_dist_env()
        accelerator = get_accelerator()
        on_cpu = accelerator.device_name() == "cpu"
        if not on_cpu:  # before the process group: NCCL binds each rank to its current device
            accelerator.set_device(int(os.environ["LOCAL_RANK"]))
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(), auto_mpi_discovery=False)
        config = {
            "train_micro_batch_size_per_gpu": args.lanes,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": args.grad_clip,
            "zero_optimization": {"stage": args.zero_stage},
            "bf16": {"enabled": args.bf16},
            # DeepSpeed's fused Adam is a CUDA kernel; on CPU the torch implementation is the one that runs
            "optimizer": {
                "type": "AdamW",
                "params": {
                    "lr": args.lr,
                    "weight_decay": args.weight_decay,
                    **({"torch_adam": True} if on_cpu else {}),
                },
            },
            "steps_per_print": 10**9,
        }
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=model.parameters(),
            config=config,
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, warmup(args.warmup)),
        )
        self.module = self.engine.module
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.zero_stage = args.zero_stage

    def __call__(self, **kwargs):
        return self.engine(**kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def state_dict_context(self):
        """Full weights on every rank while saving: ZeRO-3 keeps only a partition of each parameter (collective)."""
        import deepspeed

        return deepspeed.zero.GatheredParameters(
            list(self.module.parameters()), modifier_rank=None, enabled=self.zero_stage == 3
        )


def _default_dist_env() -> None:
    """A process group of one when no launcher set the rendezvous (`python train.py --engine deepspeed`)."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def warmup(steps: int):
    return lambda step: min(1.0, (step + 1) / max(1, steps))


# ------------------------------------------------------------------------------------------------------- train


def build_streams(args, tokenizer, config, rank: int, world_size: int, epochs: int | None = None) -> TurnStreams:
    """This rank's dialogues (every world_size-th one) as lane streams; sources and replies sized for the model."""
    max_positions = config.max_position_embeddings
    if max(args.max_source_len, args.max_target_len) > max_positions:
        raise DialogDataError(
            f"--max-source-len/--max-target-len must be <= the model's max_position_embeddings ({max_positions})"
        )
    dialogues = list(load_dialogues(args.data).values())[rank::world_size]
    examples = [
        dialogue_examples(
            turns,
            tokenizer,
            context_turns=args.context_turns,
            max_source_len=args.max_source_len,
            max_target_len=args.max_target_len,
        )
        for turns in dialogues
    ]
    return TurnStreams(
        examples,
        args.lanes,
        pad_id=config.pad_token_id,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        seed=args.seed + rank,
        epochs=epochs,
    )


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def train(args) -> list[dict]:
    """Finetune and save; returns the logged records (rank 0's view)."""
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model)
    model.train()
    engine = TorchEngine(model, args) if args.engine == "torch" else DeepSpeedEngine(model, args)
    config, device = engine.module.config, next(engine.module.parameters()).device
    batches = iter(build_streams(args, tokenizer, config, engine.rank, engine.world_size))
    dtype = next(engine.module.parameters()).dtype
    memory = engine.module.construct_memory(args.lanes).to(device, dtype)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    log = open(output / "metrics.jsonl", "w") if engine.rank == 0 else None
    history = []
    for step in range(1, args.steps + 1):
        started = time.perf_counter()
        rollout = run_rollout(
            engine,
            [to_device(next(batches), device) for _ in range(args.time_horizon)],
            memory,
            pad_id=config.pad_token_id,
            start_id=config.decoder_start_token_id,
        )
        engine.backward(rollout.loss)
        engine.step()
        memory = rollout.memory
        record = {
            "step": step,
            "loss": rollout.loss.item(),
            "tokens": rollout.tokens,
            "step_time_s": round(time.perf_counter() - started, 4),
        }
        history.append(record)
        if log:
            log.write(json.dumps(record) + "\n")
            if step % args.log_every == 0 or step in (1, args.steps):
                print(f"step {step}/{args.steps}: loss {record['loss']:.4f} ({rollout.tokens} target tokens)")
    if log:
        log.close()
    save(engine, tokenizer, args)
    return history


def save(engine, tokenizer, args) -> None:
    """save_pretrained (the model's code and auto_map come along), the tokenizer and the example settings."""
    output = Path(args.output)
    with engine.state_dict_context():
        if engine.rank == 0:
            engine.module.save_pretrained(output, safe_serialization=True)
    if engine.rank != 0:
        return
    tokenizer.save_pretrained(output)
    # a model loaded through remote code re-saves its code files; copy them from the source should that change
    auto_map = getattr(engine.module.config, "auto_map", None) or {}
    for module_file in {ref.split(".")[0] + ".py" for ref in auto_map.values()}:
        if not (output / module_file).is_file():
            shutil.copyfile(Path(args.model) / module_file, output / module_file)
    settings = {
        "context_turns": args.context_turns,
        "max_source_len": args.max_source_len,
        "max_target_len": args.max_target_len,
        "finetuned_from": str(args.model),
        "data": str(args.data),
        "steps": args.steps,
        "lr": args.lr,
        "lanes": args.lanes,
        "time_horizon": args.time_horizon,
        "engine": args.engine,
    }
    (output / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    print(f"saved the finetuned model to {output}")


def print_sample(args) -> None:
    model, tokenizer = load_model(args.output)
    turns = next(iter(load_dialogues(args.data).values()))
    history, reference = turns[:-1], turns[-1]
    kwargs = {
        "context_turns": args.context_turns,
        "max_source_len": args.max_source_len,
        "next_role": reference["role"],
    }
    print(f"{history[-1]['role']}: {history[-1]['text']}")
    print(f"  reference:       {reference['text']}")
    print(f"  with memory:     {generate_reply(model, tokenizer, history, **kwargs)}")
    print(f"  memory reset:    {generate_reply(model, tokenizer, history, use_memory=False, **kwargs)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except (DialogDataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.sample and int(os.environ.get("RANK", "0")) == 0:
        print_sample(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
