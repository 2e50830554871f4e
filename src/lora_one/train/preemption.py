"""Stop training cleanly when the cluster warns that the job is about to be killed."""
import logging
import os
import signal
import subprocess
import sys

log = logging.getLogger(__name__)


class PreemptionSignal:
    """Catches SIGUSR1, SIGUSR2 (submitit's and slurm's usual warning before the time limit) and SIGTERM,
    so training can stop at the next step boundary with a checkpoint. `hand_over()` then passes the
    signal on to the handler it replaced (submitit's: checkpoint its job and requeue), or, in a plain
    sbatch job, requeues it with `scontrol requeue`."""

    SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self.previous = {sig: signal.signal(sig, self._catch) for sig in self.SIGNALS}

    def _catch(self, signum, frame) -> None:
        log.warning("caught %s: checkpoint at the next step, then stop", signal.Signals(signum).name)
        self.received = signum

    def requested(self) -> bool:
        return self.received is not None

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def hand_over(self, main_process: bool) -> None:
        """Pass the signal on, requeue (once, from the main process) and exit with 128 + its number."""
        self.restore()
        handler = self.previous.get(self.received)
        if callable(handler):
            handler(self.received, None)
        elif main_process and os.environ.get("SLURM_JOB_ID"):
            log.warning("requeueing slurm job %s", os.environ["SLURM_JOB_ID"])
            subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
        sys.exit(128 + self.received)
