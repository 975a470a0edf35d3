#!/usr/bin/env python
"""Verify a SHARD_DIR against its manifest and print corpus statistics and a decoded sample.

    python data_prep/inspect_shards.py shards/

Every shard is checked (presence, size, sha256, tar structure, decodable samples, segment bounds,
token ids, counts, index.npy). Exit status: 0 when all is well, 1 naming each bad shard, 2 when the
directory itself cannot be read (no or a broken manifest.json).
"""

from __future__ import annotations

import argparse
import json
import sys

from _cli import run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shard_dir", metavar="SHARD_DIR", help="a directory made by shard_documents.py")
    p.add_argument(
        "--segments",
        type=int,
        default=3,
        metavar="N",
        help="segments of the sample document to decode (default 3; 0: none)",
    )
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _fmt(dist: dict[str, float]) -> str:
    if not dist:
        return "-"
    return "  ".join(f"{k} {v:,.1f}" if k == "mean" else f"{k} {v:,.0f}" for k, v in dist.items())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def go() -> int:
        from memformers.data import check_shard_dir, load_tokenizer, split_statistics

        result = check_shard_dir(args.shard_dir, progress=not args.no_progress)
        manifest = result.manifest
        stats = {split: split_statistics(checks) for split, checks in result.shards.items()}
        if args.json:
            print(
                json.dumps(
                    {"ok": result.ok, "splits": stats, "bad_shards": {c.path: c.problems for c in result.bad_shards}},
                    indent=2,
                )
            )
        else:
            tok = manifest["tokenizer"]
            print(f"shard directory: {args.shard_dir}")
            print(
                f"  tokenizer {tok['name']} ({tok['class']}, vocab {tok['vocab_size']:,}, "
                f"special ids {tok['special_ids']})"
            )
            print(f"  segment length {manifest['segment_length']} tokens (+ <s> and </s> at train time)")
            read = manifest["stats"]
            print(
                f"  prepared from {read['documents_read']:,} documents read: {read['documents_written']:,} written, "
                f"skipped {read['skipped']}, {read['invalid_utf8']:,} with invalid UTF-8 replaced"
            )
            for split, s in stats.items():
                print(
                    f"  {split}: {s['documents']:,} documents, {s['segments']:,} segments, {s['tokens']:,} tokens "
                    f"in {s['shards']} shards"
                )
                print(f"    segment length (tokens)     {_fmt(s['segment_length'])}")
                print(f"    document length (tokens)    {_fmt(s['document_tokens'])}")
                print(f"    document length (segments)  {_fmt(s['document_segments'])}")
            sample = next(
                (c.first_sample for checks in result.shards.values() for c in checks if c.ok and c.first_sample), None
            )
            if sample is not None and args.segments > 0:
                tokenizer = load_tokenizer(args.shard_dir)
                key, ids, ends, meta = sample
                print(f"\nsample {key} ({ids.size:,} tokens, {ends.size} segments; source {meta.get('source')}):")
                begin = 0
                for k, end in enumerate(ends[: args.segments].tolist()):
                    print(f"  [segment {k}, {end - begin} tokens] {tokenizer.decode(ids[begin:end].tolist())!r}")
                    begin = end
        for problem in result.problems:
            print(f"BAD {problem}", file=sys.stderr)
        for check in result.bad_shards:
            print(f"BAD {check.path}: {'; '.join(check.problems)}", file=sys.stderr)
        if not result.ok:
            total = sum(len(c) for c in result.shards.values())
            names = ", ".join(c.path for c in result.bad_shards) or "index files"
            print(f"verification failed: {len(result.bad_shards)} of {total} shards bad: {names}", file=sys.stderr)
            return 1
        if not args.json:
            print("\nall shards verified against manifest.json")
        return 0

    return run(go)


if __name__ == "__main__":
    sys.exit(main())
