"""Crash-safe file writes, the one way the package writes a file that a later run or reader trusts.

A file is written to a temporary name beside its target, flushed and fsynced, then renamed over the target
(`os.replace` is atomic on POSIX filesystems), and the folder is fsynced so that the rename itself survives a
power loss: a reader sees the old file or the new one, never a torn one. A whole directory (an export) is
published the same way: staged beside its destination, then moved into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (str: UTF-8) to `path` through a fsynced temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """`atomic_write` of `obj` as sorted, indented JSON and a final newline (the layout of every JSON record)."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def publish_dir(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the finished directory `staging` to `target` (replacing what is there), fsyncing the parent."""
    staging, target = Path(staging), Path(target)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    fsync_dir(target.parent)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so that renames inside it are durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
