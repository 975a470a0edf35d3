"""Whether several SHARD_DIRs can be mixed into one training stream (`data.sources`, `inspect_shards.py A B ...`).

A weighted mixture feeds segments of every source to one model, so the sources must agree on what a token id
means and how long a segment may be:

* the tokenizer: the manifest's `tokenizer.sha256` (the token ids' meaning), `special_ids` (the ids the loader
  and the denoiser put in: `<s>`, `</s>`, pad, mask) and `vocab_size` (the embedding table);
* `segment_length`: the stream's batches are [lanes, segment_length + 2].

`token_dtype` may differ: it is only how wide the stored ids are. Each source is compared with the first one
(the one whose tokenizer and segment length the others must match); besides, no two sources may share a name
(the name keys a source's logs and stream state) nor list the same SHARD_DIR twice (give it a larger weight).
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

from ..errors import DataError

SHA_SHOWN = 12  # hex digits of a tokenizer's sha256 shown in messages

Source = tuple[str, Path, dict[str, Any]]  # (name, SHARD_DIR, its manifest)


def mixing_problems(sources: list[Source]) -> list[str]:
    """One sentence per reason `sources` cannot be mixed, each naming both sources and what to do; [] when they can.

    `sources` are (name, SHARD_DIR, manifest as `read_manifest` returns it). Fewer than two sources have
    nothing to disagree about.
    """
    problems = []
    for a, b in combinations(sources, 2):
        same_dir = _same_dir(Path(a[1]), Path(b[1]))
        if same_dir:
            problems.append(
                f"{_label(b)} lists the same SHARD_DIR as {_label(a)}: list each SHARD_DIR once "
                "(give it a larger weight to draw more from it)"
            )
        elif a[0] == b[0]:
            problems.append(
                f"{_label(a)} and {_label(b)} have the same name {a[0]!r}: give them distinct `name`s "
                "(the name keys each source's logs and stream position)"
            )
    if sources:
        first = sources[0]
        for other in sources[1:]:
            problems.extend(_disagreements(first, other))
    return problems


def check_mixable(sources: list[Source]) -> None:
    """Raise DataError listing every problem of `mixing_problems(sources)`; return when the sources can be mixed."""
    problems = mixing_problems(sources)
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise DataError(
            f"the data sources cannot be mixed ({count}):\n" + "\n".join(f"  - {problem}" for problem in problems)
        )


def _disagreements(first: Source, other: Source) -> list[str]:
    """What `other` must share with the first source and does not: the tokenizer, the segment length."""
    problems = []
    mine, theirs = other[2].get("tokenizer", {}), first[2].get("tokenizer", {})
    differences = [
        f"{key} {_shown(key, mine.get(key))} vs {_shown(key, theirs.get(key))}"
        for key in ("sha256", "vocab_size", "special_ids")
        if mine.get(key) != theirs.get(key)
    ]
    if differences:
        problems.append(
            f"{_label(other)} and {_label(first)} have different tokenizers "
            f"({mine.get('name', '?')!r} vs {theirs.get('name', '?')!r}: {', '.join(differences)}): all sources "
            f"must share one tokenizer; re-shard one with the other's tokenizer, e.g. the corpus of {other[1]} with "
            f"data_prep/shard_documents.py --tokenizer {first[1]} --output NEW_DIR ... (a SHARD_DIR is a valid "
            "--tokenizer)"
        )
    length, wanted = other[2].get("segment_length"), first[2].get("segment_length")
    if length != wanted:
        problems.append(
            f"{_label(other)} has segment length {length} but {_label(first)} has {wanted}: all sources must share "
            f"one segment length; re-shard one, e.g. the corpus of {other[1]} with data_prep/shard_documents.py "
            f"--segment-length {wanted} --output NEW_DIR ... (or that of {first[1]} with --segment-length {length})"
        )
    return problems


def _label(source: Source) -> str:
    name, path = source[0], source[1]
    return f"{path}" if name == str(path) else f"source {name!r} ({path})"


def _shown(key: str, value: Any) -> str:
    if key == "sha256" and isinstance(value, str):
        return value[:SHA_SHOWN]
    return str(value)


def _same_dir(a: Path, b: Path) -> bool:
    """True when `a` and `b` are one directory (symbolic links and relative paths resolved)."""
    try:
        return a.samefile(b)
    except OSError:  # one does not exist (a manifest passed without its directory): compare the paths
        return a.resolve() == b.resolve()
