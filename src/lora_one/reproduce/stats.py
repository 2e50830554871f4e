"""The statistics of a study's tables, on plain numbers: mean ± sample std, Student-t 95 % intervals,
paired differences over shared seeds, held-out loss curves (first step reaching a target, the area
under the curve), the majority-class baseline and degenerate (one-class) runs.

A 95 % interval is mean ± t(0.975, n−1)·s/√n. A paired difference is taken seed by seed (each seed
shares its data order, init batches and held-out rows across methods), so the seed-to-seed variance
they share cancels; a comparison is "resolved" only where its interval excludes 0."""
import math
import statistics
from dataclasses import dataclass

# Two-sided 95 % Student-t critical values t(0.975, df), df = 1..30; beyond, the normal 1.96.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
DEGENERATE_SHARE = 0.95  # a run predicting one class for at least this share of rows is a constant classifier


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def confidence_interval(values: list[float]) -> tuple[float, float]:
    """95 % Student-t interval of the mean; a single value is its own (degenerate) interval."""
    mean, std = mean_std(values)
    n = len(values)
    if n < 2:
        return mean, mean
    half = (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * std / math.sqrt(n)
    return mean - half, mean + half


@dataclass(frozen=True)
class Paired:
    n: int          # seeds both sides finished
    mean: float     # mean of (method − reference) over those seeds
    low: float      # its 95 % interval
    high: float

    @property
    def resolved(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)


def paired_difference(values: dict[int, float], reference: dict[int, float]) -> Paired | None:
    """(seed → value) − (seed → reference value) over the seeds both have; None without any."""
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return None
    differences = [values[s] - reference[s] for s in seeds]
    low, high = confidence_interval(differences)
    return Paired(len(seeds), statistics.fmean(differences), low, high)


def first_step_at_or_below(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated step whose loss is at most `target` (0: the init alone); None if never."""
    return next((step for step, loss in curve if loss <= target), None)


def mean_over_steps(curve: list[tuple[int, float]]) -> float | None:
    """The area under a loss curve divided by its length in steps (trapezoids between evaluated steps):
    the held-out loss averaged over training; None for a curve of one point."""
    if len(curve) < 2:
        return None
    area = sum((b - a) * (la + lb) / 2 for (a, la), (b, lb) in zip(curve, curve[1:]))
    return area / (curve[-1][0] - curve[0][0])


def is_degenerate(predicted_counts: dict[str, int]) -> bool:
    total = sum(predicted_counts.values())
    return total > 0 and max(predicted_counts.values()) >= DEGENERATE_SHARE * total


def majority_label(gold_counts: dict[str, int], label_words: list[str]) -> str:
    """The most frequent gold label (the first in label order on a tie)."""
    return max(label_words, key=lambda word: (gold_counts.get(word, 0), -label_words.index(word)))


def clip(low: float, high: float, bounds: tuple[float, float]) -> tuple[float, float]:
    return max(low, bounds[0]), min(high, bounds[1])
