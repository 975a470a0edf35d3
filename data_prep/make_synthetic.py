#!/usr/bin/env python
"""Write a synthetic corpus of long documents whose facts can only be recalled with memory.

    python data_prep/make_synthetic.py --output synth.jsonl --num-docs 2000

Facts ("The code of Zorvak is amber.") are stated early and recalled in the same words much later
("Recall: the code of Zorvak is amber."), after at least --gap-words words of filler that never
mention a key or a value; values come from a closed set of --num-values words, so chance is
1/num_values. With --max-repeats R each fact is stated 1..R times in a row (a curriculum inside the
data that lets a memory learn to pick facts up; probe with a corpus of --max-repeats 1). With
--recalls-per-fact K every fact is recalled in K rounds, --recall-spacing-words apart: recalls at
growing distances from the statement, so the memory learns to write a fact and to keep it. See
memformers/recall/corpus.py for the format and the segment-distance guarantee.
"""

from __future__ import annotations

import argparse
import json
import sys

from _cli import run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, metavar="FILE.jsonl", help="JSON lines file to write")
    p.add_argument("--num-docs", type=int, required=True, metavar="N", help="number of documents")
    p.add_argument("--seed", type=int, default=0, help="seed (the corpus is a pure function of the arguments)")
    p.add_argument("--num-values", type=int, default=16, help="size of the closed value set (2..32; default 16)")
    p.add_argument("--facts-per-doc", type=int, default=4, help="facts per document (default 4)")
    p.add_argument(
        "--gap-words",
        type=int,
        default=128,
        help="min filler words between the last statement and the first recall "
        "(default 128: >= 2 segments of 64 tokens)",
    )
    p.add_argument(
        "--max-repeats", type=int, default=1, help="state each fact 1..R times in a row, R drawn per fact (default 1)"
    )
    p.add_argument(
        "--repeat-filler-words",
        type=int,
        default=8,
        help="at most this many filler words between repeated statements (default 8)",
    )
    p.add_argument(
        "--recalls-per-fact", type=int, default=1, help="recall each fact this many times, in rounds (default 1)"
    )
    p.add_argument(
        "--lead-words",
        type=int,
        default=30,
        help="at most this many filler words before the first statement (default 30)",
    )
    p.add_argument(
        "--short-keys", action="store_true", help="one-syllable keys (1-2 tokens): denser back-to-back statements"
    )
    p.add_argument(
        "--recall-spacing-words", type=int, default=40, help="filler words between rounds of recalls (default 40)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def go() -> int:
        from memformers.data import DataError
        from memformers.recall import SyntheticConfig, write_synthetic_corpus

        try:
            config = SyntheticConfig(
                args.seed,
                args.num_values,
                args.facts_per_doc,
                args.gap_words,
                args.max_repeats,
                args.repeat_filler_words,
                args.recalls_per_fact,
                args.recall_spacing_words,
                args.lead_words,
                args.short_keys,
            )
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        summary = write_synthetic_corpus(args.output, args.num_docs, config, progress=not args.no_progress)
        print(
            f"wrote {summary['documents']:,} documents ({summary['facts']:,} facts, "
            f"{summary['mean_words_per_document']:.0f} words each on average) to {summary['path']}\n"
            f"  values ({len(summary['values'])}): {', '.join(summary['values'])}\n"
            f"  chance level of a recall: {summary['chance']:.4f}\n"
            f"  settings: {json.dumps(summary['config'])}"
        )
        return 0

    return run(go)


if __name__ == "__main__":
    sys.exit(main())
