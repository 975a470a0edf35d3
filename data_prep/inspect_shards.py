#!/usr/bin/env python
"""Verify a SHARD_DIR against its manifest and print corpus statistics and a decoded sample.

    python data_prep/inspect_shards.py shards/
    python data_prep/inspect_shards.py wiki_shards/ books_shards/      # several: each, then whether they mix

Every shard is checked (presence, size, sha256, tar structure, decodable samples, segment bounds,
token ids, counts, index.npy). Exit status: 0 when all is well, 1 naming each bad shard, 2 when the
directory itself cannot be read (no or a broken manifest.json).

With several SHARD_DIRs each is inspected in turn, under a heading naming it, and then the verdict on
mixing them in one training run (`data.sources`): they must share the tokenizer and the segment length,
and no directory may be listed twice. The verdict covers the manifests that could be read. Exit status:
the worst of the directories' (as above) and of the verdict: 2 when they cannot be mixed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _cli import run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "shard_dirs", nargs="+", metavar="SHARD_DIR", help="a directory made by shard_documents.py (or several)"
    )
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


def _verify(shard_dir: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Check every shard of `shard_dir`: its DirCheck and the statistics per split (DataError: unreadable)."""
    from memformers.data import check_shard_dir, split_statistics

    result = check_shard_dir(shard_dir, progress=not args.no_progress)
    return result, {split: split_statistics(checks) for split, checks in result.shards.items()}


def _json_stats(result: Any, stats: dict[str, Any]) -> dict[str, Any]:
    return {"ok": result.ok, "splits": stats, "bad_shards": {c.path: c.problems for c in result.bad_shards}}


def _print_report(shard_dir: str, result: Any, stats: dict[str, Any], args: argparse.Namespace) -> None:
    """The human report of one directory: tokenizer, segment length, read counts, split statistics, a sample."""
    from memformers.data import load_tokenizer

    manifest = result.manifest
    tok = manifest["tokenizer"]
    print(f"shard directory: {shard_dir}")
    print(f"  tokenizer {tok['name']} ({tok['class']}, vocab {tok['vocab_size']:,}, special ids {tok['special_ids']})")
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
        tokenizer = load_tokenizer(shard_dir)
        key, ids, ends, meta = sample
        print(f"\nsample {key} ({ids.size:,} tokens, {ends.size} segments; source {meta.get('source')}):")
        begin = 0
        for k, end in enumerate(ends[: args.segments].tolist()):
            print(f"  [segment {k}, {end - begin} tokens] {tokenizer.decode(ids[begin:end].tolist())!r}")
            begin = end


def _report_bad(result: Any) -> int:
    """Name each bad shard and index file on stderr; 1 when there are any, else 0."""
    for problem in result.problems:
        print(f"BAD {problem}", file=sys.stderr)
    for check in result.bad_shards:
        print(f"BAD {check.path}: {'; '.join(check.problems)}", file=sys.stderr)
    if result.ok:
        return 0
    total = sum(len(c) for c in result.shards.values())
    names = ", ".join(c.path for c in result.bad_shards) or "index files"
    print(f"verification failed: {len(result.bad_shards)} of {total} shards bad: {names}", file=sys.stderr)
    return 1


def _inspect_one(args: argparse.Namespace) -> int:
    shard_dir = args.shard_dirs[0]
    result, stats = _verify(shard_dir, args)
    if args.json:
        print(json.dumps(_json_stats(result, stats), indent=2))
    else:
        _print_report(shard_dir, result, stats, args)
    code = _report_bad(result)
    if code == 0 and not args.json:
        print("\nall shards verified against manifest.json")
    return code


def _inspect_many(args: argparse.Namespace) -> int:
    """Inspect each directory in turn, then judge whether those whose manifest could be read can be mixed."""
    from memformers.data import DataError, mixing_problems

    dirs = args.shard_dirs
    codes, corpora, sources = [], {}, []
    for number, shard_dir in enumerate(dirs, 1):
        if not args.json:
            print(f"{'' if number == 1 else chr(10)}=== {shard_dir} ({number} of {len(dirs)}) ===")
        try:
            result, stats = _verify(shard_dir, args)
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            codes.append(2)
            corpora[shard_dir] = {"ok": False, "error": str(exc)}
            continue
        sources.append((shard_dir, Path(shard_dir), result.manifest))
        corpora[shard_dir] = _json_stats(result, stats)
        if not args.json:
            _print_report(shard_dir, result, stats, args)
        code = _report_bad(result)
        if code == 0 and not args.json:
            print("\nall shards verified against manifest.json")
        codes.append(code)
    problems = mixing_problems(sources)
    if args.json:
        mixable = not problems and len(sources) == len(dirs)
        print(json.dumps({"corpora": corpora, "mixable": mixable, "problems": problems}, indent=2))
    else:
        _print_verdict(sources, len(dirs), problems)
    return max([*codes, 2 if problems else 0])


def _print_verdict(sources: list[tuple[str, Path, dict[str, Any]]], listed: int, problems: list[str]) -> None:
    from memformers.data.format.mixing import SHA_SHOWN

    print()
    if len(sources) < listed:
        print(f"{listed - len(sources)} of {listed} directories could not be read; the verdict covers the others")
    if problems:
        print(f"these {len(sources)} corpora cannot be mixed:")
        for problem in problems:
            print(f"  {problem}")
    elif len(sources) < 2:
        print(f"no mixing verdict: only {len(sources)} manifest could be read")
    else:
        manifest = sources[0][2]
        print(
            f"these {len(sources)} corpora can be mixed: tokenizer {manifest['tokenizer']['sha256'][:SHA_SHOWN]}, "
            f"segment length {manifest['segment_length']}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(lambda: _inspect_one(args) if len(args.shard_dirs) == 1 else _inspect_many(args))


if __name__ == "__main__":
    sys.exit(main())
