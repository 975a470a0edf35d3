"""How a run ends: the stop request a scheduler sends, the exit codes the trainer returns, and how an error is
reported.

SIGTERM / SIGUSR1 (Slurm's preemption notice, `scancel --signal`) ask for a stop at the end of the current step:
the trainer checkpoints and exits EXIT_PREEMPTED, which `slurm/pretrain.sh` turns into a requeue. A mistake a user
can make (a config, a corpus, a checkpoint that does not fit) is one line on stderr naming it and what to do, exit
EXIT_CONFIG_ERROR on every rank; MEMFORMERS_DEBUG=1 adds the traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

from memformers.data import DataError

from .checkpoint import CheckpointError
from .config import ConfigError

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2  # a config, corpus or checkpoint that does not fit; the message names it
EXIT_NONFINITE = 3  # train.max_nonfinite_steps skipped updates in a row
EXIT_PEER_FAILURE = 4  # a collective timed out or failed: other ranks stalled or died
EXIT_DAMAGED_DATA = 5  # more than data.max_bad_documents damaged documents (after a checkpoint)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after a checkpoint; run again to continue

USER_ERRORS = (ConfigError, DataError, CheckpointError)
"""What a user's config, data or run directory can cause: reported as one line, not a traceback."""


def report(error: BaseException, exit_code: int) -> int:
    """Print `error` as one line on stderr (its traceback too with MEMFORMERS_DEBUG=1); returns `exit_code`."""
    if os.environ.get("MEMFORMERS_DEBUG", "") not in ("", "0"):
        traceback.print_exception(error, file=sys.stderr)
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
    return exit_code


class StopRequest:
    """SIGTERM / SIGUSR1 ask the run to stop at the end of the current step. `requested` is this rank's: the
    ranks agree through the step's own reduction (`train_step(stop=...)`), so all stop after the same step."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
