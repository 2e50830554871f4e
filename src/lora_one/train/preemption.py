"""Stop training cleanly when the cluster warns that the job is about to be killed, or on Ctrl-C."""
import logging
import os
import signal
import subprocess
import sys

log = logging.getLogger(__name__)


class PreemptionSignal:
    """Catches SIGUSR1, SIGUSR2 (submitit's and slurm's usual warning before the time limit), SIGTERM and
    SIGINT (Ctrl-C), so training can stop at the next step boundary with a checkpoint. `hand_over()`
    then passes a cluster's signal on to the handler it replaced (submitit's: checkpoint its job and
    requeue), or, in a plain sbatch job, requeues it with `scontrol requeue`; otherwise, and always for
    Ctrl-C (a person stopping the run, not a preemption: no requeue), it prints the command that
    continues the run. A second Ctrl-C stops at once, without a checkpoint (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
    installed: "PreemptionSignal | None" = None  # the one whose handlers are in place (they are per process)

    def __init__(self, resume_command: str):
        if PreemptionSignal.installed is not None:  # a run that ended in an exception left its handlers
            PreemptionSignal.installed.restore()
        PreemptionSignal.installed = self
        self.resume_command = resume_command
        self.received: int | None = None
        # a Ctrl-C ignored by whoever started us (a background job of a script) stays ignored
        caught = [sig for sig in self.SIGNALS if not (sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN)]
        self.previous = {sig: signal.signal(sig, self._catch) for sig in caught}

    def _catch(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self._interrupt)
            log.warning("Ctrl-C: checkpoint at the next step, then stop (Ctrl-C again stops at once, without one)")
        else:
            log.warning("caught %s: checkpoint at the next step, then stop", signal.Signals(signum).name)
        if self.received is None:  # the first signal decides: a Ctrl-C after a preemption warning still requeues
            self.received = signum

    def _interrupt(self, signum, frame) -> None:
        """A second Ctrl-C: stop at once, the handlers as they were before."""
        self.restore()
        raise KeyboardInterrupt

    def requested(self) -> bool:
        return self.received is not None

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        PreemptionSignal.installed = None

    def hand_over(self, main_process: bool) -> None:
        """Pass a cluster's signal on, or requeue (once, from the main process), or say how to continue;
        exit with 128 + the signal's number (Ctrl-C: 130)."""
        self.restore()
        handler = self.previous.get(self.received)
        preempted = self.received != signal.SIGINT
        if preempted and callable(handler):
            handler(self.received, None)
        elif preempted and main_process and os.environ.get("SLURM_JOB_ID"):
            log.warning("requeueing slurm job %s", os.environ["SLURM_JOB_ID"])
            subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
        elif main_process:
            print(f"stopped by {signal.Signals(self.received).name} with a checkpoint; continue with: "
                  f"{self.resume_command}", file=sys.stderr, flush=True)
        sys.exit(128 + self.received)
