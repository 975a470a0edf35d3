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
import sys
import warnings
from pathlib import Path

from memformers.training.batches import SegmentFeed
from memformers.training.checkpoint import Checkpointer, CheckpointError
from memformers.training.compiling import CompileClock
from memformers.training.config import ConfigError, load_config
from memformers.training.corpus import Corpus
from memformers.training.distributed import init_runtime, seed_everything
from memformers.training.engine import build_engine, build_model, initial_memory, parameter_count
from memformers.training.evaluation import Evaluator
from memformers.training.metrics import MetricsLogger
from memformers.training.profiling import StepProfiler
from memformers.training.signals import EXIT_CONFIG_ERROR, EXIT_NONFINITE, EXIT_OK, EXIT_PREEMPTED, StopRequest
from memformers.training.state import TrainState, attach_parked
from memformers.training.step import NonFiniteGuard, StepSpec, train_step

# DeepSpeed calls a torch collective that torch deprecates, once per step: keep the progress bar readable
warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see pretrain/configs/)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by `deepspeed`
    parser.add_argument("overrides", nargs="*", help="section.key=value, applied over the YAML")
    return parser.parse_args(argv)


def start_logging(
    cfg, runtime, state: TrainState, resume_tag: str | None, segment_length: int, parameters: int, notes: list[str]
) -> MetricsLogger:
    """Rank 0's config.yaml, metrics.jsonl, progress bar and wandb run (resumed with the state's wandb id), the
    start line and the resume's `notes`."""
    if runtime.is_main:
        (Path(cfg.run_dir) / "config.yaml").write_text(cfg.to_yaml())
    logger = MetricsLogger(
        Path(cfg.run_dir),
        cfg.logging,
        enabled=runtime.is_main,
        start_step=state.step,
        max_steps=cfg.train.max_steps,
        wandb_id=state.wandb_id,
        config=cfg.to_dict(),
    )
    state.wandb_id = logger.wandb_id  # a fresh wandb run's new id
    logger.write(
        f"{'resumed from ' + resume_tag if resume_tag else 'starting'} at step {state.step}: "
        f"{runtime.world_size} ranks x {cfg.data.lanes} lanes, segment length {segment_length}, "
        f"{parameters:,} parameters"
    )
    sources = cfg.data.corpora()
    if len(sources) > 1:
        total = sum(s.weight for s in sources)
        logger.write("mixing " + ", ".join(f"{s.name} ({s.weight / total:.0%} of tokens)" for s in sources))
    for note in notes:
        logger.write(note)
    return logger


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = StopRequest()  # before start-up: a preemption notice can arrive while the model loads
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    # --- runtime, data, model, engine ----------------------------------------------------------------------------
    runtime = init_runtime()
    seed_everything(cfg.seed)
    (run_dir := Path(cfg.run_dir)).mkdir(parents=True, exist_ok=True)
    corpus = Corpus.open(cfg.data, cfg.noise, seed=cfg.seed, runtime=runtime)
    compile_clock = CompileClock(enabled=cfg.model.compile)  # build_model compiles the layers
    model = build_model(
        cfg, tokenizer_size=len(corpus.tokenizer), special_ids=corpus.special, segment_length=corpus.segment_length
    )
    checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint.keep, runtime)
    layout = checkpointer.resume_layout()  # None: a fresh run
    engine = build_engine(model, cfg, runtime, load_universal=layout is not None and layout.universal)
    loader = corpus.stream("train", cfg.train.epochs)

    # --- state: fresh, or resumed from RUN_DIR/checkpoints/latest, on this run's shape ---------------------------
    state = TrainState(memory=initial_memory(engine, cfg.data.lanes, runtime.device))
    try:
        notes = state.load(checkpointer, layout, engine, loader) if layout else []
    except CheckpointError as error:
        print(f"resume error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    resume_tag = layout.tag if layout else None
    logger = start_logging(cfg, runtime, state, resume_tag, corpus.segment_length, parameter_count(model), notes)
    if state.step >= cfg.train.max_steps:  # only a resumed run starts there
        logger.write(f"nothing to do: {resume_tag} already reached train.max_steps={cfg.train.max_steps}")
        logger.close()
        return EXIT_OK

    # --- the loop ------------------------------------------------------------------------------------------------
    spec = StepSpec.of(cfg.train, engine, runtime, peak=cfg.logging.peak_tflops, sources=tuple(corpus.names))
    evaluator = Evaluator(engine, corpus, cfg.eval)
    nonfinite = NonFiniteGuard(cfg.train.max_nonfinite_steps)
    profiler = StepProfiler(cfg.logging.profile_steps, run_dir, runtime, logger)
    feed = SegmentFeed(iter(loader), runtime.device, prepare=lambda batch: attach_parked(batch, state.parked))
    exit_code = EXIT_OK
    engine.train()
    while state.step < cfg.train.max_steps:
        with profiler.step(state.step + 1):
            record = train_step(engine, feed, state, spec, stop=stop)
        if record is None:
            logger.write(f"training data exhausted after {cfg.train.epochs} epoch(s) at step {state.step}")
            break
        stop_agreed = record.pop("stop_agreed")  # every rank's signal, read with the step's numbers
        record["passes_by_source"] = dict(zip(corpus.names, loader.passes_done()))
        logger.log(record)
        logger.progress(state.step, record)
        compile_clock.report_once(logger, record["step_time_s"])  # after the step that compiled
        if nonfinite.tripped(record, logger):
            exit_code = EXIT_NONFINITE
            break
        if state.step >= cfg.train.max_steps:  # the last step: evaluated and checkpointed below, signal or not
            break
        if evaluator.due(state.step):
            state.last_eval = evaluator.run(state.step, logger)
        if stop_agreed:
            state.save(checkpointer, engine, loader, cfg)
            logger.write(f"stop signal: checkpointed step {state.step}, exiting with {EXIT_PREEMPTED} to be requeued")
            exit_code = EXIT_PREEMPTED
            break
        if state.step % cfg.checkpoint.every_steps == 0:
            state.save(checkpointer, engine, loader, cfg)
    profiler.close()  # a run that ended inside logging.profile_steps

    # --- finish: evaluate and checkpoint the last step (not after a stop) ---------------------------------------
    if exit_code == EXIT_OK:
        if evaluator.enabled and state.last_eval.get("step") != state.step:
            state.last_eval = evaluator.run(state.step, logger)
        state.save(checkpointer, engine, loader, cfg)
        logger.write(f"done: step {state.step}, {state.tokens:,} tokens")
    logger.close()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
