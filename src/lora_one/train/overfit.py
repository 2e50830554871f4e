"""The verdict of `debug=overfit` (conf/debug/overfit.yaml): a working setup, trained on a handful of
examples for a few dozen steps, drives their loss well down; a broken one (no gradient reaching the
adapters, an lr of 0, labels that do not match the inputs, an update of the wrong sign) does not."""
import logging
import statistics

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def overfit_verdict(losses: list[float], max_ratio: float, last_steps: int) -> tuple[bool, str]:
    """(passed, the verdict in one line) for a training-loss curve: passed when the mean loss of the
    last `last_steps` steps is at most `max_ratio` × the first step's (a mean: one lucky step is not
    a fall)."""
    if not losses:
        return False, "overfit check: FAILED (no training step was taken)"
    first, last = losses[0], statistics.fmean(losses[-last_steps:])
    passed = last <= max_ratio * first
    verdict = "passed" if passed else "FAILED"
    return passed, (f"overfit check: {verdict} (loss {first:.4f} → {last:.4f}, the mean of the last "
                    f"{min(last_steps, len(losses))} steps; passing needs ≤ {max_ratio:g} × the first step's)")


def report_overfit(losses: list[float], check: DictConfig) -> bool:
    """Log the verdict on `losses` with the preset's `overfit_check` settings; returns whether it passed."""
    passed, line = overfit_verdict(losses, check.max_ratio, check.last_steps)
    log.log(logging.INFO if passed else logging.WARNING, "%s", line)
    return passed
