"""Binary classification metrics as HF `evaluate` (scikit-learn) reports them for GLUE, from the
confusion counts of one positive class:

    F1  = 2·TP / (2·TP + FP + FN)                                  (0 when there is no positive at all)
    MCC = (TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN))        (0 when a factor is 0)"""
import math
from typing import Hashable, Sequence


def confusion(gold: Sequence[Hashable], predicted: Sequence[Hashable], positive: Hashable) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) with `positive` the positive class and every other value negative."""
    pairs = [(g == positive, p == positive) for g, p in zip(gold, predicted, strict=True)]
    tp = sum(g and p for g, p in pairs)
    fp = sum(p and not g for g, p in pairs)
    fn = sum(g and not p for g, p in pairs)
    return tp, fp, fn, len(pairs) - tp - fp - fn


def f1_score(gold: Sequence[Hashable], predicted: Sequence[Hashable], positive: Hashable) -> float:
    tp, fp, fn, _ = confusion(gold, predicted, positive)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def matthews_correlation(gold: Sequence[Hashable], predicted: Sequence[Hashable], positive: Hashable) -> float:
    tp, fp, fn, tn = confusion(gold, predicted, positive)
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0
