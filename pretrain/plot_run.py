"""Draw a pretraining run's curves from its metrics.jsonl, finished or still training, as one PNG: training loss,
lr, tokens/s, grad norm, eval loss with and without memory, the memory's gain by segment position at the last
evaluation, and for a run that mixes sources each source's token share and eval losses.

    python pretrain/plot_run.py runs/tiny [--output runs/tiny/curves.png]

Exit codes: 0 written (the path is printed); 2 no such run directory, or nothing to plot yet.
See memformers/plots.py for what each panel shows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memformers.plots import plot_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="the pretraining run_dir (holds metrics.jsonl)")
    parser.add_argument("--output", help="the PNG to write (default: RUN_DIR/curves.png)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"error: {run_dir} is not a run directory", file=sys.stderr)
        return 2
    try:
        written = plot_run(run_dir, Path(args.output) if args.output else run_dir / "curves.png")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
