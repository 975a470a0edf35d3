"""Evaluate a MemBART model on one or more corpora: denoising loss with memory carried and with it reset.

    python pretrain/evaluate.py --model runs/tiny --data data/wiki-512 --output evals/tiny
    python pretrain/evaluate.py --model runs/tiny:step-00000200 --data A --data B --output OUT [--max-batches N]
    python pretrain/evaluate.py --model exports/tiny --data data/wiki-512 --output OUT [--lanes N] [--split val]

MODEL: a run directory (its latest checkpoint), RUN_DIR:TAG, a checkpoint directory of any ZeRO stage, or an export
of pretrain/export_hf.py (its folder, or its Hugging Face hub id; with HF_HUB_OFFLINE=1 it must be in the hub cache).
Each corpus's split is streamed with the run's lanes, noise and seed, so on the same checkpoint and corpus the
figures are the ones the run's own evaluation logged; an export carries those settings (pretraining.json), so
evaluating it gives the numbers of its checkpoint.

Writes OUT_DIR/eval.json (eval_loss, eval_loss_no_memory, memory_gain, eval_ppl, eval_ppl_no_memory, both losses by
segment position, the same per corpus under `corpora`, the model's and the data's identities) and OUT_DIR/eval.png
(loss by segment position with and without memory, one panel per corpus).
Exit codes: 0 evaluated; 2 bad inputs (the message says what to do).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memformers.evaluate import EvalError, evaluate_corpora, load_eval_model, write_results
from memformers.export.record import PRECISIONS
from memformers.training.distributed import local_device


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", required=True, help="RUN_DIR, RUN_DIR:TAG, a checkpoint directory, or an export (folder or hub id)"
    )
    parser.add_argument("--data", required=True, action="append", help="a SHARD_DIR (repeat for several corpora)")
    parser.add_argument("--output", required=True, help="directory for eval.json and eval.png")
    parser.add_argument("--split", default="val", help="the split of each corpus to evaluate on (default: val)")
    parser.add_argument("--max-batches", type=int, help="cap on batches per corpus (default: the run's eval setting)")
    parser.add_argument("--all-batches", action="store_true", help="the whole split, whatever the run's cap")
    parser.add_argument("--lanes", type=int, help="documents side by side (default: the run's lanes × ranks)")
    parser.add_argument("--positions", type=int, help="segment positions reported (default: the run's)")
    parser.add_argument(
        "--precision", choices=["auto", *PRECISIONS], default="auto", help="compute in (auto: what the run used)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.lanes is not None and args.lanes < 1:
        print("error: --lanes must be >= 1", file=sys.stderr)
        return 2
    max_batches = None if args.all_batches else (args.max_batches if args.max_batches is not None else "run")
    try:
        loaded = load_eval_model(args.model, device=local_device(), precision=args.precision)
        result = evaluate_corpora(
            loaded, args.data, split=args.split, lanes=args.lanes, max_batches=max_batches, positions=args.positions
        )
    except EvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    json_path, png_path = write_results(result, Path(args.output))
    for name, figures in result["corpora"].items():
        print(
            f"{name}: eval loss {figures['eval_loss']:.4f}, without memory {figures['eval_loss_no_memory']:.4f}, "
            f"memory gain {figures['memory_gain']:+.4f} ({figures['eval_tokens']:,} tokens)"
        )
    if "note" in result["model"]:
        print(f"note: {result['model']['note']}")
    no_png = " (no eval.png: pip install 'memformers[plots]')"
    print(f"wrote {json_path} and {png_path}" if png_path else f"wrote {json_path}{no_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
