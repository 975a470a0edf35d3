"""How a run ends: the stop request a scheduler sends, and the exit codes the trainer returns.

SIGTERM / SIGUSR1 (Slurm's preemption notice, `scancel --signal`) ask for a stop at the end of the current step:
the trainer checkpoints and exits EXIT_PREEMPTED, which `slurm/pretrain.sh` turns into a requeue.
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2  # the config does not validate; the message names the key
EXIT_NONFINITE = 3  # train.max_nonfinite_steps skipped updates in a row
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after a checkpoint; run again to continue


class StopRequest:
    """SIGTERM / SIGUSR1 ask the run to stop at the end of the current step. `requested` is this rank's: the
    ranks agree through the step's own reduction (`train_step(stop=...)`), so all stop after the same step."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
