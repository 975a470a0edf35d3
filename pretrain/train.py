"""Pretrain MemBART with DeepSpeed ZeRO: BART denoising on every segment, memory carried across segments and steps.

    python pretrain/train.py --config pretrain/configs/tiny.yaml [section.key=value ...]       # one process
    deepspeed --num_gpus 8 pretrain/train.py --config pretrain/configs/base.yaml               # or torchrun / srun

Each rank streams `data.lanes` documents side by side, one per lane, segment after segment; every lane has a memory
that is reset when its document starts. A rollout runs `train.time_horizon` segments with gradients through the
memory; `train.rollouts_per_step` rollouts make an optimizer step. An existing `run_dir` resumes from its latest
checkpoint, exactly. SIGTERM/SIGUSR1: finish the step, checkpoint, exit 75 (Slurm requeues on that code).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

from memformers.data import SegmentStreamLoader, load_tokenizer, read_manifest, special_ids
from memformers.noising import BartDenoiser, token_tables
from memformers.training.checkpoint import Checkpointer
from memformers.training.config import ConfigError, load_config
from memformers.training.distributed import all_reduce, init_runtime, peak_tflops, rng_state, seed_everything, set_rng_state
from memformers.training.engine import build_engine, build_model, flops_per_token, model_dtype
from memformers.training.evaluation import evaluate
from memformers.training.metrics import MetricsLogger
from memformers.training.recurrence import loss_weights, run_rollout

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after a checkpoint; run again to continue

# DeepSpeed calls a torch collective that torch deprecates, once per step: keep the progress bar readable
warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)


class StopRequest:
    """SIGTERM / SIGUSR1 ask the run to stop at the end of the current step."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self, device) -> bool:
        """Whether any rank was signalled (all ranks must stop together, at the same step)."""
        return bool(all_reduce(torch.tensor([float(self.requested)], device=device), op="max").item())


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def take(batches, count: int, device) -> list[dict] | None:
    """The next `count` batches, or None when the data is exhausted (train.epochs reached)."""
    out = []
    for _ in range(count):
        batch = next(batches, None)
        if batch is None:
            return None
        out.append(to_device(batch, device))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see pretrain/configs/)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by `deepspeed`
    parser.add_argument("overrides", nargs="*", help="section.key=value, applied over the YAML")
    args = parser.parse_args(argv)
    stop = StopRequest()  # before start-up: a preemption notice can arrive while the model loads
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2

    # --- runtime, data, model, engine ----------------------------------------------------------------------------
    runtime = init_runtime()
    seed_everything(cfg.seed)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    manifest = read_manifest(cfg.data.path)
    tokenizer = load_tokenizer(cfg.data.path)
    segment_length = manifest["segment_length"]
    special = special_ids(tokenizer)
    model = build_model(cfg, tokenizer_size=len(tokenizer), special_ids=special, segment_length=segment_length)
    engine = build_engine(model, cfg, runtime)
    model_config = engine.module.config
    pad_id, decoder_start_id = model_config.pad_token_id, model_config.decoder_start_token_id

    denoiser = BartDenoiser(cfg.noise, token_tables(tokenizer), mask_id=special["mask"], bos_id=special["bos"],
                            eos_id=special["eos"], pad_id=special["pad"], vocab_size=len(tokenizer), seed=cfg.seed)

    def stream(split: str, epochs: int | None) -> SegmentStreamLoader:
        return SegmentStreamLoader(cfg.data.path, split, rank=runtime.rank, world_size=runtime.world_size,
                                   lanes=cfg.data.lanes, segment_length=segment_length, seed=cfg.seed, epochs=epochs,
                                   transform=denoiser.collate, prefetch=cfg.data.prefetch)

    loader = stream("train", cfg.train.epochs)
    has_val = manifest["splits"].get("val", {}).get("documents", 0) > 0

    # --- state: fresh, or resumed from RUN_DIR/checkpoints/latest -----------------------------------------------
    lanes, dtype = cfg.data.lanes, model_dtype(engine)
    memory = engine.module.construct_memory(lanes).to(runtime.device, dtype)
    step, tokens, wandb_id, last_eval = 0, 0, None, {}
    checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint.keep, runtime)
    resume_tag = checkpointer.latest_tag()
    if resume_tag is not None:
        rank_state, trainer_state = checkpointer.load(engine, resume_tag)
        loader.load_state_dict(rank_state["loader"])
        memory = rank_state["memory"].to(runtime.device, dtype)
        set_rng_state(rank_state["rng"])
        step, tokens = trainer_state["step"], trainer_state["tokens"]
        wandb_id, last_eval = trainer_state.get("wandb_id"), trainer_state.get("last_eval", {})
    if runtime.is_main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    finished_before = resume_tag if resume_tag is not None and step >= cfg.train.max_steps else None

    logger = MetricsLogger(run_dir, enabled=runtime.is_main, start_step=step, max_steps=cfg.train.max_steps,
                           progress_bar=cfg.logging.progress_bar, wandb_setting=cfg.logging.wandb,
                           wandb_project=cfg.logging.wandb_project, wandb_name=cfg.logging.wandb_name,
                           wandb_id=wandb_id, config=cfg.to_dict())
    logger.write(f"{'resumed from ' + resume_tag if resume_tag else 'starting'} at step {step}: "
                 f"{runtime.world_size} ranks x {lanes} lanes, segment length {segment_length}, "
                 f"{sum(getattr(p, 'ds_numel', p.numel()) for p in model.parameters()):,} parameters")  # ZeRO-3: partitioned
    peak = cfg.logging.peak_tflops or peak_tflops(runtime.device)
    train_flops_per_token = flops_per_token(model_config)

    def save() -> None:
        checkpointer.save(
            engine, step,
            rank_state={"loader": loader.state_dict(), "memory": memory.cpu(), "rng": rng_state()},
            trainer_state={"step": step, "tokens": tokens, "wandb_id": logger.wandb_id, "last_eval": last_eval,
                           "config": cfg.to_dict()},
            model_config_json=model_config.to_json_string(),
        )

    def run_eval() -> None:
        nonlocal last_eval
        if not has_val:
            return
        result = evaluate(engine, (to_device(b, runtime.device) for b in stream("val", 1)), lanes=lanes,
                          memory=engine.module.construct_memory(lanes).to(runtime.device, dtype),
                          positions=cfg.eval.positions, pad_id=pad_id, decoder_start_id=decoder_start_id,
                          max_batches=cfg.eval.max_batches)
        last_eval = {"step": step, **result}
        logger.log(last_eval)
        logger.write(f"step {step}: eval loss {last_eval['eval_loss']:.4f}, without memory "
                     f"{last_eval['eval_loss_no_memory']:.4f}, memory gain {last_eval['memory_gain']:+.4f}")

    # --- the loop ------------------------------------------------------------------------------------------------
    weights = loss_weights(cfg.train.time_horizon, cfg.train.loss_weighting)
    batches = iter(loader)
    nonfinite_in_a_row, exit_code = 0, 0
    engine.train()
    while step < cfg.train.max_steps:
        started, lr = time.perf_counter(), engine.get_lr()[0]  # the lr this step applies
        step_loss, step_tokens = 0.0, 0
        for _ in range(cfg.train.rollouts_per_step):
            segments = take(batches, cfg.train.time_horizon, runtime.device)
            if segments is None:
                break
            result = run_rollout(engine, segments, memory, weights, replay=cfg.train.memory_replay,
                                 pad_id=pad_id, decoder_start_id=decoder_start_id)
            engine.backward(result.loss)
            engine.step()
            memory = result.memory
            step_loss, step_tokens = step_loss + result.loss_sum, step_tokens + result.tokens
        if segments is None:
            logger.write(f"training data exhausted after {cfg.train.epochs} epoch(s) at step {step}")
            break
        step += 1

        totals = all_reduce(torch.tensor([step_loss, float(step_tokens)], dtype=torch.float64, device=runtime.device))
        elapsed = time.perf_counter() - started
        tokens += int(totals[1].item())
        applied = engine.was_step_applied()
        nonfinite_in_a_row = 0 if applied else nonfinite_in_a_row + 1
        tokens_per_s = totals[1].item() / elapsed
        record = {
            "step": step,
            "loss": totals[0].item() / max(totals[1].item(), 1.0),
            "lr": lr,
            "tokens": tokens,
            "tokens_per_s": tokens_per_s,
            "grad_norm": float(engine.get_global_grad_norm()) if applied else None,
            "mfu": tokens_per_s * train_flops_per_token / (runtime.world_size * peak * 1e12) if peak else None,
            "step_time_s": elapsed,
            "skipped_steps": engine.skipped_steps,
        }
        logger.log(record)
        logger.progress(step, record)
        if not applied:
            logger.write(f"step {step}: non-finite loss or gradient, update skipped ({nonfinite_in_a_row} in a row)")
            if nonfinite_in_a_row >= cfg.train.max_nonfinite_steps:
                logger.write(f"stopping: {nonfinite_in_a_row} consecutive non-finite steps (train.max_nonfinite_steps)."
                             " Lower train.lr, raise train.warmup_steps, or check the data.")
                exit_code = 3
                break

        if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step < cfg.train.max_steps:
            run_eval()
        if step < cfg.train.max_steps and stop.agreed(runtime.device):  # at max_steps: just finish
            save()
            logger.write(f"stop signal: checkpointed step {step}, exiting with {EXIT_PREEMPTED} to be requeued")
            exit_code = EXIT_PREEMPTED
            break
        if step % cfg.checkpoint.every_steps == 0 and step < cfg.train.max_steps:
            save()

    if exit_code == 0 and finished_before is None:
        if last_eval.get("step") != step:
            run_eval()
        save()
        logger.write(f"done: step {step}, {tokens:,} tokens")
    elif finished_before is not None:
        logger.write(f"nothing to do: {finished_before} already reached train.max_steps={cfg.train.max_steps}")
    logger.close()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
