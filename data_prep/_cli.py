"""Shared plumbing of the data_prep scripts: import path and error reporting."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(main: Callable[[], int]) -> int:
    """Run a script's main with memformers importable; bad input or settings exit 2 with the message."""
    if str(REPO) not in sys.path:  # the repository, for a checkout where memformers is not installed
        sys.path.insert(0, str(REPO))
    from memformers.data import DataError

    try:
        return main()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
