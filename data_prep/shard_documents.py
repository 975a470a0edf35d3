#!/usr/bin/env python
"""Tokenize and segment long documents into webdataset shards for memory-recurrent pretraining.

    python data_prep/shard_documents.py --input corpus/ --tokenizer tok/ --output shards/ \\
        --segment-length 512 --workers 16 --val-fraction 0.01

Each document becomes token ids cut into consecutive segments of at most L tokens (at the last
sentence end inside each window, else hard), one sample per document in SHARD_DIR/{train,val}/
shard-NNNNNN.tar, with SHARD_DIR/manifest.json and a copy of the tokenizer in SHARD_DIR/tokenizer/.
The split is a stable hash of each document's text. The same input gives byte-identical shards
whatever --workers is; re-running an interrupted command finishes the missing shards only.

Inputs: .txt (one document per file), .jsonl / .json (a text field per record), .parquet, each
optionally .gz/.zst/.bz2/.xz (not .parquet), folders and globs of these, a dataset saved with
save_to_disk, or a 🤗 dataset name for datasets.load_dataset (hub names need the hub).

In slices, e.g. one Slurm array task each (slurm/prepare_data.sh drives this), N tasks then one merge:

    python data_prep/shard_documents.py ARGS --num-slices N --slice-index I    # for each I in 0..N-1
    python data_prep/shard_documents.py ARGS --num-slices N --merge            # after all N succeeded

give the same SHARD_DIR, byte for byte, as one run of ARGS. Slice I is a contiguous part of the inputs in
reading order: whole inputs when there are at least N (cut at the input boundaries nearest to equal shares
of the bytes), otherwise byte ranges of the inputs laid end to end, uncompressed .jsonl files cut at line
starts (other inputs go whole to the slice where they begin). A slice writes only SHARD_DIR/.slices/
slice-IIIII/ (slices may run at once on nodes sharing the filesystem) and exits 0; re-run, it resumes, and
a finished slice is not redone. The merge needs every slice finished with the same ARGS and N, else exits
1 naming the slices missing; it writes the shards (re-numbered over all slices), index.npy, tokenizer/ and
manifest.json, then removes .slices/. Re-running a finished merge does nothing.

Exit status: 0 done; 1 merge with slices missing or unfinished; 2 bad input, settings or arguments.
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
    p.add_argument("--tokenizer", required=True, metavar="TOK", help="HF tokenizer directory, hub name, or a SHARD_DIR")
    p.add_argument(
        "--output",
        required=True,
        metavar="SHARD_DIR",
        help="shard directory to write (new, empty, or an unfinished run of this command)",
    )
    p.add_argument(
        "--segment-length", type=int, required=True, metavar="L", help="max tokens per segment, <s>/</s> not counted"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes: they read, tokenize and write; this one only keeps the order (default: the CPUs "
        "this process may use; 0: all in this process)",
    )
    p.add_argument(
        "--block-bytes",
        type=int,
        default=None,
        metavar="B",
        help="input bytes per unit of work (default: about 4 per worker, 1 to 64 MiB); the output does not depend on "
        "it",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.01,
        metavar="F",
        help="share of documents for the val split (default: 0.01; 0: none)",
    )
    p.add_argument("--text-field", default="text", help="field or column holding the text (default: text)")
    p.add_argument(
        "--id-field", default="id", help="field kept as the document's id in its metadata, when present (default: id)"
    )
    p.add_argument("--docs-per-shard", type=int, default=1000, metavar="K", help="documents per shard (default: 1000)")
    p.add_argument(
        "--skip-bad-records", action="store_true", help="skip and count malformed records instead of stopping"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a SHARD_DIR made with other settings or inputs")
    p.add_argument("--dataset-split", default="train", help="split of a 🤗 dataset input (default: train)")
    p.add_argument("--dataset-config", default=None, help="configuration name of a 🤗 dataset input")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    sliced = p.add_argument_group("sharding in slices (see above; slurm/prepare_data.sh)")
    sliced.add_argument(
        "--num-slices",
        type=int,
        default=None,
        metavar="N",
        help="the inputs are sharded in N slices: give --slice-index or --merge with it",
    )
    sliced.add_argument(
        "--slice-index",
        type=int,
        default=None,
        metavar="I",
        help="tokenize slice I only (0 <= I < N) into SHARD_DIR/.slices/slice-IIIII/",
    )
    sliced.add_argument(
        "--merge", action="store_true", help="merge the N finished slices into SHARD_DIR (exit 1 naming any missing)"
    )
    args = p.parse_args(argv)
    if (args.slice_index is not None or args.merge) and args.num_slices is None:
        p.error("--slice-index and --merge need --num-slices N")
    if args.num_slices is not None and (args.slice_index is None) == (not args.merge):
        p.error("--num-slices N needs either --slice-index I or --merge (one of them)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def go() -> int:
        from memformers.data import IncompleteSlicesError, shard_documents

        try:
            summary = shard_documents(
                args.input,
                args.tokenizer,
                args.output,
                args.segment_length,
                workers=args.workers,
                block_bytes=args.block_bytes,
                val_fraction=args.val_fraction,
                text_field=args.text_field,
                id_field=args.id_field or None,
                docs_per_shard=args.docs_per_shard,
                skip_bad_records=args.skip_bad_records,
                overwrite=args.overwrite,
                dataset_split=args.dataset_split,
                dataset_config=args.dataset_config,
                progress=not args.no_progress,
                num_slices=args.num_slices,
                slice_index=args.slice_index,
                merge=args.merge,
            )
        except IncompleteSlicesError as exc:  # the merge's "not yet": exit 1, unlike bad input (2)
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(summary.format())
        return 0

    return run(go)


if __name__ == "__main__":
    sys.exit(main())
