"""Pretrain MemBART with DeepSpeed ZeRO: BART denoising on every segment, memory carried across segments and steps.

    python pretrain/train.py --config pretrain/configs/tiny.yaml [section.key=value ...]       # one process
    deepspeed --num_gpus 8 pretrain/train.py --config pretrain/configs/base.yaml               # or torchrun / srun

Each rank streams `data.lanes` documents side by side, one per lane, segment after segment; every lane has a memory
that is reset when its document starts. A rollout runs `train.time_horizon` segments with gradients through the
memory; `train.rollouts_per_step` rollouts make an optimizer step. An existing `run_dir` resumes from its latest
intact checkpoint, exactly. SIGTERM/SIGUSR1: finish the step, checkpoint, exit 75 (Slurm requeues on that code).
Exit codes: 0 done, 2 a config/corpus/checkpoint that does not fit (one line says what), 3 too many skipped steps,
4 other ranks stalled or died, 5 too many damaged documents, 75 preempted (memformers/training/signals.py).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from memformers.training.batches import SegmentFeed
from memformers.training.checkpoint import Checkpointer
from memformers.training.compiling import CompileClock
from memformers.training.config import PretrainConfig, load_config
from memformers.training.corpus import Corpus
from memformers.training.distributed import Runtime, init_runtime, peer_failure, seed_everything
from memformers.training.engine import build_engine, build_model, initial_memory, parameter_count
from memformers.training.evaluation import Evaluator
from memformers.training.metrics import MetricsLogger
from memformers.training.profiling import StepProfiler
from memformers.training.signals import (
    EXIT_CONFIG_ERROR,
    EXIT_DAMAGED_DATA,
    EXIT_NONFINITE,
    EXIT_OK,
    EXIT_PEER_FAILURE,
    EXIT_PREEMPTED,
    USER_ERRORS,
    StopRequest,
    report,
)
from memformers.training.state import TrainState, attach_parked
from memformers.training.step import DamagedDataGuard, LossSpikes, NonFiniteGuard, StepSpec, train_step

# DeepSpeed calls a torch collective that torch deprecates, once per step: keep the progress bar readable
warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see pretrain/configs/)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by `deepspeed`
    parser.add_argument("overrides", nargs="*", help="section.key=value, applied over the YAML")
    return parser.parse_args(argv)


@dataclass
class Run:
    """Everything a started run holds: built, checked and, for an existing run_dir, resumed."""

    cfg: PretrainConfig
    runtime: Runtime
    corpus: Corpus
    engine: object
    loader: object
    checkpointer: Checkpointer
    state: TrainState
    logger: MetricsLogger


def start(args: argparse.Namespace) -> Run:
    """Config → runtime → corpus → model → engine → state (fresh, or resumed from the latest intact checkpoint on
    this run's shape) → logging. Every mistake a user can make raises one of USER_ERRORS before RUN_DIR exists."""
    cfg = load_config(args.config, args.overrides)
    runtime = init_runtime(cfg.train.collective_timeout_s)
    seed_everything(cfg.seed)
    run_dir = Path(cfg.run_dir)
    corpus = Corpus.open(cfg.data, cfg.noise, seed=cfg.seed, runtime=runtime)
    model = build_model(
        cfg, tokenizer_size=len(corpus.tokenizer), special_ids=corpus.special, segment_length=corpus.segment_length
    )
    checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint.keep, runtime)
    layout = checkpointer.resume_layout()  # None: a fresh run
    engine = build_engine(model, cfg, runtime, load_universal=layout is not None and layout.universal)
    loader = corpus.stream("train", cfg.train.epochs)
    state = TrainState(memory=initial_memory(engine, cfg.data.lanes, runtime.device))
    notes = [*layout.notes, *state.load(checkpointer, layout, engine, loader)] if layout else []

    run_dir.mkdir(parents=True, exist_ok=True)  # only now: a run that cannot start leaves nothing behind
    if runtime.is_main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    logger = MetricsLogger(
        run_dir, cfg.logging, enabled=runtime.is_main, start_step=state.step, max_steps=cfg.train.max_steps,
        wandb_id=state.wandb_id, config=cfg.to_dict(),
    )  # fmt: skip
    state.wandb_id = logger.wandb_id  # a fresh wandb run's new id
    logger.write(
        f"{'resumed from ' + layout.tag if layout else 'starting'} at step {state.step}: {runtime.world_size} ranks x "
        f"{cfg.data.lanes} lanes, segment length {corpus.segment_length}, {parameter_count(model):,} parameters"
    )
    sources = cfg.data.corpora()
    if len(sources) > 1:
        total = sum(s.weight for s in sources)
        logger.write("mixing " + ", ".join(f"{s.name} ({s.weight / total:.0%} of tokens)" for s in sources))
    for note in notes:
        logger.write(note)
    return Run(cfg, runtime, corpus, engine, loader, checkpointer, state, logger)


def train(run: Run, stop: StopRequest) -> int:
    """The loop: optimizer steps until train.max_steps (or the data ends), evaluating and checkpointing on the way;
    returns the exit code. Collective: a failed collective raises (main tells whether other ranks stopped answering)."""
    cfg, engine, loader, state, logger = run.cfg, run.engine, run.loader, run.state, run.logger
    spec = StepSpec.of(cfg.train, engine, run.runtime, peak=cfg.logging.peak_tflops, sources=tuple(run.corpus.names))
    factor, window = cfg.train.loss_spike_factor, cfg.train.loss_spike_window
    spikes = LossSpikes(factor, window, state.loss_history) if factor else None
    evaluator = Evaluator(engine, run.corpus, cfg.eval)
    nonfinite, damaged = (
        NonFiniteGuard(cfg.train.max_nonfinite_steps),
        DamagedDataGuard(cfg.data.max_bad_documents, state),
    )
    compile_clock = CompileClock(enabled=cfg.model.compile)  # the layers compile in the first step
    profiler = StepProfiler(cfg.logging.profile_steps, Path(cfg.run_dir), run.runtime, logger)
    feed = SegmentFeed(iter(loader), run.runtime.device, prepare=lambda batch: attach_parked(batch, state.parked))
    exit_code = EXIT_OK
    engine.train()
    while state.step < cfg.train.max_steps:
        with profiler.step(state.step + 1):
            record = train_step(engine, feed, state, spec, stop=stop, spikes=spikes)
        if record is None:
            logger.write(f"training data exhausted after {cfg.train.epochs} epoch(s) at step {state.step}")
            break
        stop_agreed = record.pop("stop_agreed")  # every rank's signal, read with the step's numbers
        record["passes_by_source"] = dict(zip(run.corpus.names, loader.passes_done()))
        logger.log(record)
        logger.progress(state.step, record)
        compile_clock.report_once(logger, record["step_time_s"])  # after the step that compiled
        if nonfinite.tripped(record, logger):
            exit_code = EXIT_NONFINITE
            break
        if damaged.tripped(record, logger):
            state.save(run.checkpointer, engine, loader, cfg)
            exit_code = EXIT_DAMAGED_DATA
            break
        if state.step >= cfg.train.max_steps:  # the last step: evaluated and checkpointed below, signal or not
            break
        if evaluator.due(state.step):
            state.last_eval = evaluator.run(state.step, logger)
        if stop_agreed:
            state.save(run.checkpointer, engine, loader, cfg)
            logger.write(f"stop signal: checkpointed step {state.step}, exiting with {EXIT_PREEMPTED} to be requeued")
            exit_code = EXIT_PREEMPTED
            break
        if state.step % cfg.checkpoint.every_steps == 0:
            state.save(run.checkpointer, engine, loader, cfg)
    profiler.close()  # a run that ended inside logging.profile_steps

    # --- finish: evaluate and checkpoint the last step (not after a stop) ---------------------------------------
    if exit_code == EXIT_OK:
        if evaluator.enabled and state.last_eval.get("step") != state.step:
            state.last_eval = evaluator.run(state.step, logger)
        state.save(run.checkpointer, engine, loader, cfg)
        logger.write(f"done: step {state.step}, {state.tokens:,} tokens")
    return exit_code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = StopRequest()  # before start-up: a preemption notice can arrive while the model loads
    try:
        run = start(args)
    except USER_ERRORS as error:  # a config, corpus or checkpoint that does not fit: say which, and what to do
        return report(error, EXIT_CONFIG_ERROR)
    try:
        if run.state.step >= run.cfg.train.max_steps:  # only a resumed run starts there
            run.logger.write(f"nothing to do: step {run.state.step} already reached train.max_steps")
            return EXIT_OK
        return train(run, stop)
    except RuntimeError as error:  # a collective that failed: because other ranks stalled or died?
        failure = peer_failure(error, run.runtime.collective_timeout_s)
        if failure is None:
            raise
        return report(failure, EXIT_PEER_FAILURE)
    except USER_ERRORS as error:
        return report(error, EXIT_CONFIG_ERROR)
    finally:
        run.logger.close()


if __name__ == "__main__":
    sys.exit(main())
