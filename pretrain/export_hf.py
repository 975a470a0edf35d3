"""Export a pretraining checkpoint as a Hugging Face model directory (safetensors, tokenizer, generation config,
model card, and the model code for `trust_remote_code=True`), then check it reproduces the training model.

    python pretrain/export_hf.py --run-dir runs/tiny --output exports/tiny [--tag step-00000200] [--dtype bf16]

Exit codes: 0 exported and verified; 1 the verification failed (nothing published); 2 bad inputs.
See memformers/export/ (its __init__.py) for what is written and how it is checked.
"""

from __future__ import annotations

import argparse
import sys

from memformers.export import DTYPES, ExportError, VerificationError, export_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="the pretraining run_dir (holds checkpoints/)")
    parser.add_argument("--output", required=True, help="directory to write the model to (must be empty)")
    parser.add_argument("--tag", help="checkpoint tag, e.g. step-00000200 (default: the one checkpoints/latest names)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the saved weights")
    parser.add_argument("--force", action="store_true", help="replace the contents of a non-empty --output")
    parser.add_argument("--tokenizer", help="tokenizer directory (or SHARD_DIR), if the run's SHARD_DIR has moved")
    args = parser.parse_args(argv)
    try:
        report = export_checkpoint(
            args.run_dir, args.output, tag=args.tag, dtype=args.dtype, force=args.force, tokenizer=args.tokenizer
        )
    except VerificationError as error:
        print(f"error: verification failed\n{error}", file=sys.stderr)
        return 1
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
