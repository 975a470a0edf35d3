#!/usr/bin/env python
"""Train a SentencePiece tokenizer (BPE or unigram, byte fallback) and save it as a HF tokenizer directory.

    python data_prep/train_tokenizer.py --input corpus/ --vocab-size 32000 --output tok/

The directory loads offline with `AutoTokenizer.from_pretrained(TOK_DIR)`, with BART's special ids
<s>=0, <pad>=1, </s>=2, <unk>=3 and <mask>=4. Inputs are read as by shard_documents.py (.txt, .jsonl,
.json, .parquet, compressed, folders, globs, 🤗 datasets).
"""

from __future__ import annotations

import argparse
import sys

from _cli import run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--input", nargs="+", required=True, metavar="PATH", help="files, folders, globs or 🤗 dataset names"
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        required=True,
        metavar="N",
        help="vocabulary size (>= 300; may come out smaller on a small corpus)",
    )
    p.add_argument("--output", required=True, metavar="TOK_DIR", help="tokenizer directory to write (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace what TOK_DIR holds with the new tokenizer")
    p.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe", help="SentencePiece model (default: bpe)")
    p.add_argument("--text-field", default="text", help="field or column holding the text (default: text)")
    p.add_argument(
        "--skip-bad-records", action="store_true", help="skip and count malformed records instead of stopping"
    )
    p.add_argument("--dataset-split", default="train", help="split of a 🤗 dataset input (default: train)")
    p.add_argument("--dataset-config", default=None, help="configuration name of a 🤗 dataset input")
    p.add_argument(
        "--character-coverage",
        type=float,
        default=0.9995,
        help="share of characters given their own piece; the rest fall back to bytes",
    )
    p.add_argument(
        "--max-sentences", type=int, default=5_000_000, help="lines sampled for training (default: 5,000,000)"
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def go() -> int:
        from memformers.data import train_tokenizer

        summary = train_tokenizer(
            args.input,
            args.output,
            args.vocab_size,
            model_type=args.model_type,
            text_field=args.text_field,
            skip_bad_records=args.skip_bad_records,
            dataset_split=args.dataset_split,
            dataset_config=args.dataset_config,
            character_coverage=args.character_coverage,
            max_sentences=args.max_sentences,
            seed=args.seed,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
        print(summary.format())
        return 0

    return run(go)


if __name__ == "__main__":
    sys.exit(main())
