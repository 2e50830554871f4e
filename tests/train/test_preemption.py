"""The signal itself: a Ctrl-C is never requeued, a slurm preemption is, and outside a cluster the line says
how to continue."""
import os
import signal
import subprocess

import pytest

from lora_one.train.preemption import PreemptionSignal


@pytest.fixture
def default_handlers():
    """The handlers a fresh process has, whatever earlier tests installed."""
    defaults = {sig: signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
                for sig in PreemptionSignal.SIGNALS}
    earlier = {sig: signal.signal(sig, handler) for sig, handler in defaults.items()}
    yield
    for sig, handler in earlier.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("default_handlers")
@pytest.mark.parametrize("sig,slurm,requeued,printed", [
    (signal.SIGINT, "123", False, True),  # a person stopped it: never requeued, even in a slurm job
    (signal.SIGTERM, None, False, True),  # outside slurm: nothing requeues it, so say how to continue
    (signal.SIGUSR1, "123", True, False),  # a slurm preemption: requeued, the relaunch continues by itself
])
def test_hand_over_requeues_only_a_cluster_preemption(monkeypatch, capsys, sig, slurm, requeued, printed):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: calls.append(command))
    if slurm:
        monkeypatch.setenv("SLURM_JOB_ID", slurm)
    else:
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    preemption = PreemptionSignal("python run_exp.py resume=outputs/x")
    os.kill(os.getpid(), sig)
    assert preemption.requested()
    with pytest.raises(SystemExit) as exit_:
        preemption.hand_over(main_process=True)
    assert exit_.value.code == 128 + sig
    assert calls == ([["scontrol", "requeue", "123"]] if requeued else [])
    line = f"stopped by {signal.Signals(sig).name} with a checkpoint; continue with: python run_exp.py resume=outputs/x"
    assert capsys.readouterr().err.splitlines() == ([line] if printed else [])
