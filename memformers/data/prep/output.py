"""The state of a sharding output folder: fresh, an unfinished run to resume, a finished SHARD_DIR, or refused.

A run's *state* is its settings and an inputs fingerprint (plus, for a slice, which slice of how many). A folder
holding a finished or unfinished run of another state is refused unless `overwrite`, with a message naming
what differs; leftovers without any record are cleared.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..format.manifest import MANIFEST_NAME, TOKENIZER_SUBDIR, read_manifest

PROGRESS_DIR = ".progress"
SLICES_DIR = ".slices"  # the slices of a sliced run (slices.py), removed by its merge
OWNED = (MANIFEST_NAME, TOKENIZER_SUBDIR, "train", "val", PROGRESS_DIR, SLICES_DIR)


def folder_entries(out: Path) -> set[str]:
    """What the output folder holds; DataError when it is a file or holds anything a SHARD_DIR does not."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder")
    entries = set(os.listdir(out)) if out.is_dir() else set()
    if entries - set(OWNED):
        raise DataError(
            f"output folder {out} is not empty and not a shard directory (it holds "
            f"{sorted(entries - set(OWNED))[:5]}): choose a new or empty folder"
        )
    return entries


def differences(previous: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """What differs between two run states ({"settings", "inputs"[, "slices"]}), for error messages."""
    found = [k for k in sorted(state["settings"]) if previous.get("settings", {}).get(k) != state["settings"][k]]
    if previous.get("inputs") != state["inputs"]:
        found.append("inputs (files, sizes or modification times)")
    if previous.get("slices", {}).get("count") != state.get("slices", {}).get("count"):
        found.append("--num-slices")
    return found


def refusal(out: Path, what: str, previous: dict[str, Any], state: dict[str, Any]) -> DataError:
    """The error for an existing run in `out` made with other settings or inputs than this one."""
    return DataError(
        f"{out} holds {what} made with different settings ({', '.join(differences(previous, state))}): re-run "
        "with the same arguments to finish or keep it, write to a new folder, or pass --overwrite to replace it"
    )


def finished_state(out: Path, entries: set[str]) -> dict[str, Any] | None:
    """The settings and inputs of the finished shard set in `out`, None when there is none."""
    if MANIFEST_NAME not in entries:
        return None
    manifest = read_manifest(out)
    return {"settings": manifest.get("settings"), "inputs": manifest.get("inputs")}


def remove_entries(out: Path, names: tuple[str, ...]) -> None:
    """Delete `out/name` (file or folder) for each name that exists."""
    for name in names:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def prepare_output(out: Path, state: dict[str, Any], overwrite: bool) -> str:
    """Check what `out` holds; returns 'fresh', 'resume' or 'complete'. Raises DataError when refused."""
    entries = folder_entries(out)
    previous = finished_state(out, entries)
    if previous is not None:
        status = "complete"
    elif (out / PROGRESS_DIR / "state.json").is_file():
        previous, status = json.loads((out / PROGRESS_DIR / "state.json").read_text(encoding="utf-8")), "resume"
    elif entries - {SLICES_DIR}:
        status = "stale"  # leftovers without any record: start over
    else:
        status = "fresh"
    if previous is not None and previous != state:
        if not overwrite:
            raise refusal(out, "a finished shard set" if status == "complete" else "an unfinished run", previous, state)
        status = "stale"
    if status != "complete" and SLICES_DIR in entries and not overwrite:
        raise DataError(
            f"{out} holds the slices of an unfinished sliced run ({SLICES_DIR}/): finish it with the same arguments "
            "and --num-slices N --merge (or slurm/prepare_data.sh), or pass --overwrite to discard them"
        )
    if status == "stale" or (overwrite and status == "complete"):
        remove_entries(out, OWNED)
        status = "fresh"
    elif overwrite:
        remove_entries(out, (SLICES_DIR,))
    return status


@contextmanager
def discarded_on_bad_input(out: Path, owned: tuple[str, ...], fresh: bool, existed: bool) -> Iterator[None]:
    """A fresh run that stops on bad input or settings (DataError) removes what it wrote (`owned` entries of `out`,
    and `out` when it did not exist before): that partial output could never be resumed, as fixing the input or
    passing --skip-bad-records makes another run; the advised re-run then starts clean instead of being refused."""
    try:
        yield
    except DataError:
        if fresh:
            remove_entries(out, owned)
            if not existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise
